"""A route's `rate` shared by every dispatcher replica: one send schedule in NATS KV.

The schedule is the generic cell rate algorithm (GCRA): the key `<route>` of the
names.RATE_BUCKET bucket holds the route's *theoretical arrival time* (TAT), the wall-clock time
from which the next event may be sent. To send, a replica reserves the slot
`max(now, TAT)` and moves TAT one interval (1/rate) on, with a compare-and-set on the
key's revision; a replica that lost the race reads the new TAT and tries again. Then it
waits until its slot (telling JetStream the message is in progress meanwhile) and sends.

Why this one: it needs no leader and no membership (a replica that joins, leaves or
crashes changes nothing: the route's rate holds whatever the number of replicas), a crash
wastes at most the slots the crashed replica had reserved, and it is exact, not an
estimate. Its cost is one KV round trip per event (two after a lost race), so it suits
the rates sinks impose (up to a few hundred events/s); replicas' clocks must agree
(NTP) to within a fraction of the interval. The alternatives: dividing the rate by the
number of live replicas found with `$SRV.PING` costs nothing per event but is wrong for
a discovery interval whenever a replica starts or stops, and wastes rate when some
replicas have no work; a per-route leader handing out tokens needs an election and
stalls the route while a new leader takes over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from vebus import names
from vebus.bus.kv import ensure_bucket
from vebus.errors import RateLimiterUnavailableError

__all__ = ["RateLimiter", "rate_bucket"]

#: lost races in a row before a reservation gives up (the event is retried later)
MAX_CONFLICTS = 50


async def rate_bucket(js: JetStreamContext, *, replicas: int) -> KeyValue:
    """The KV bucket holding every rate-limited route's schedule, created if missing."""
    return await ensure_bucket(
        js,
        names.RATE_BUCKET,
        replicas=replicas,
        description="vebus: each rate-limited route's next send time",
    )


class RateLimiter:
    """One route's share of the schedule in this replica."""

    def __init__(
        self,
        kv: KeyValue,
        route: str,
        rate: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._key = names.token(route)
        self._interval = 1.0 / rate
        self._clock = clock
        self._lock = asyncio.Lock()
        #: the TAT and key revision this replica last saw; revision None: read it first
        self._tat = 0.0
        self._revision: int | None = None
        #: lost races, for tests and logs
        self.conflicts = 0

    async def reserve(self) -> float:
        """Reserve the route's next send slot; returns its wall-clock time (maybe now)."""
        async with self._lock:  # this replica's reservations do not race each other
            try:
                for _ in range(MAX_CONFLICTS):
                    if self._revision is None:
                        await self._read()
                    slot = max(self._clock(), self._tat)
                    tat = slot + self._interval
                    try:
                        self._revision = await self._kv.update(
                            self._key, repr(tat).encode(), last=self._revision
                        )
                    except nats.js.errors.KeyWrongLastSequenceError:
                        self.conflicts += 1
                        self._revision = None  # another replica moved it: read again
                        continue
                    self._tat = tat
                    return slot
            except (TimeoutError, nats.errors.Error) as e:
                self._revision = None
                raise RateLimiterUnavailableError(f"rate schedule unavailable: {e!r}") from e
            raise RateLimiterUnavailableError(
                f"rate schedule: lost the race {MAX_CONFLICTS} times in a row"
            )

    async def _read(self) -> None:
        try:
            entry = await self._kv.get(self._key)
        except nats.js.errors.KeyDeletedError as e:  # purged by hand: start afresh
            self._tat, self._revision = 0.0, int(getattr(e.entry, "revision", 0) or 0)
            return
        except nats.js.errors.KeyNotFoundError:
            self._tat, self._revision = 0.0, 0
            return
        try:
            self._tat = float(entry.value or b"0")
        except ValueError:
            self._tat = 0.0
        self._revision = entry.revision or 0

    async def wait(
        self,
        slot: float,
        *,
        heartbeat: Callable[[], Awaitable[None]] | None = None,
        every: float = 5.0,
    ) -> None:
        """Sleep until `slot`, calling `heartbeat` every `every` seconds meanwhile."""
        while (remaining := slot - self._clock()) > 0:
            await asyncio.sleep(min(remaining, every))
            if heartbeat is not None and slot - self._clock() > 0:
                await heartbeat()
