"""One active collector per vCenter: a lease in a NATS KV bucket whose entries expire.

The bucket's max_age is the lease's time to live: an entry not renewed within it is removed
by the server, and `kv.create` (which succeeds only when the key has no value) lets the
first standby that asks take it over. The holder renews with `kv.update(last=revision)`, a
compare-and-set: if the entry expired and another replica created it, the revision differs
and the renewal fails. The holder also keeps a local deadline (the start of its last good
renewal plus the TTL, minus a margin): past it, it behaves as if the lease were lost even
when NATS cannot tell it so, because by then a standby may hold it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from vebus import aio, names
from vebus.bus.kv import ensure_bucket
from vebus.bus.publish import describe, observed_write
from vebus_collector.errors import LeaseLostError

__all__ = ["LEASE_TTL", "Lease", "LeaseInfo", "ensure_lease_bucket"]

log = logging.getLogger(__name__)

#: seconds a lease lives without renewal (the bucket's max_age): a standby takes over
#: within this plus one poll after the active replica dies
LEASE_TTL = 5.0
#: the holder stops acting this long before the server can expire its lease
SAFETY_MARGIN = 1.0
#: how often a standby tries to take the lease
POLL_INTERVAL = 1.0


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a lease entry says about its holder."""

    holder: str
    host: str = ""
    pid: int = 0
    since: str = ""


async def ensure_lease_bucket(js: JetStreamContext, replicas: int) -> tuple[KeyValue, float]:
    """The lease bucket (created when missing) and its TTL in seconds."""
    kv = await ensure_bucket(
        js,
        names.LEASE_BUCKET,
        replicas=replicas,
        ttl=LEASE_TTL,
        description="vebus collector leases: which replica follows each vCenter",
    )
    status = await kv.status()
    ttl = float(status.ttl or 0)
    if ttl <= 2 * SAFETY_MARGIN:
        raise RuntimeError(
            f"KV bucket {names.LEASE_BUCKET} has max_age {ttl}s: a lease bucket needs one of a few "
            f"seconds (vebus creates it with {LEASE_TTL}s); delete the bucket to recreate it"
        )
    return kv, ttl


class Lease:
    """The lease on one vCenter, from the point of view of one replica."""

    def __init__(self, kv: KeyValue, vcenter: str, holder: str, ttl: float) -> None:
        self.kv = kv
        self.key = f"lease.{names.token(vcenter)}"
        #: what a write of the lease is published to (observed: a full JetStream shows)
        self.subject = names.kv_subject(names.LEASE_BUCKET, self.key)
        self.vcenter = vcenter
        self.holder = holder
        self.ttl = ttl
        self.renew_every = max(0.2, ttl / 5)
        self.revision: int | None = None
        self.deadline = 0.0
        #: who holds it when we do not (for /readyz)
        self.other: LeaseInfo | None = None

    def held(self) -> bool:
        """True while this replica holds the lease and its local deadline has not passed."""
        return self.revision is not None and time.monotonic() < self.deadline

    def _value(self) -> bytes:
        info = LeaseInfo(
            holder=self.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        return msgspec.json.encode(info)

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this replica now holds it."""
        started = time.monotonic()
        try:
            self.revision = await observed_write(
                self.subject, self.kv.create(self.key, self._value())
            )
        except KeyWrongLastSequenceError:
            self.revision = None
            self.other = await self._current()
            return False
        self.deadline = started + self.ttl - SAFETY_MARGIN
        self.other = None
        return True

    async def wait_acquire(self, stopping: asyncio.Event) -> bool:
        """Poll until the lease is ours (True) or `stopping` is set (False)."""
        async for _ in aio.every(POLL_INTERVAL, stopping):
            try:
                if await self.try_acquire():
                    return True
            except (TimeoutError, nats.errors.Error) as e:
                log.warning("%s: cannot reach the lease bucket: %s", self.vcenter,
                            describe(self.subject, e))  # fmt: skip
        return False

    async def keep(self) -> None:
        """Renew until cancelled; raises LeaseLostError when the lease is gone."""
        # stopped by cancellation only: aio.every raises a cancel lost in a renewal, which
        # would otherwise renew for ever
        async for _ in aio.every(self.renew_every, wait_first=True):
            if self.revision is None:
                raise LeaseLostError("lease not held")
            started = time.monotonic()
            try:
                self.revision = await observed_write(
                    self.subject, self.kv.update(self.key, self._value(), last=self.revision)
                )
                self.deadline = started + self.ttl - SAFETY_MARGIN
            except KeyWrongLastSequenceError:
                self.revision = None
                self.other = await self._current()
                who = self.other.holder if self.other else "nobody (it expired)"
                raise LeaseLostError(f"lease now held by {who}") from None
            except (TimeoutError, nats.errors.Error) as e:
                if time.monotonic() >= self.deadline:
                    self.revision = None
                    why = describe(self.subject, e)
                    raise LeaseLostError(f"lease not renewed before it could expire ({why})") from e
                log.warning("%s: lease renewal failed, trying again: %s", self.vcenter,
                            describe(self.subject, e))  # fmt: skip

    async def release(self) -> None:
        """Give the lease up (a standby takes over at its next poll)."""
        rev, self.revision = self.revision, None
        if rev is None:
            return
        try:
            await self.kv.delete(self.key, last=rev)
        except (KeyWrongLastSequenceError, TimeoutError, nats.errors.Error) as e:
            log.debug("%s: lease not released (%r); it expires by itself", self.vcenter, e)

    async def _current(self) -> LeaseInfo | None:
        try:
            entry = await self.kv.get(self.key)
        except (KeyNotFoundError, NotFoundError):
            return None
        try:
            return msgspec.json.decode(entry.value or b"", type=LeaseInfo)
        except msgspec.DecodeError:
            return LeaseInfo(holder="(unreadable)")
