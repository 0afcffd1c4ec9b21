"""A pull-consumer loop with bounded concurrency and explicit ack, nak or term per message.

The handler looks at one message and returns what to do with it (`Ack`, `Nak(delay)`,
`Term`); the loop does it. A handler that raises is logged and its message nak'ed after a
short delay: JetStream's delivery count then counts the failure as an attempt.

With `prefetch`, up to that many messages more than `max_in_flight` are fetched ahead and
wait in the worker, so that a handler that finishes is replaced at once instead of after a
fetch round trip (a latency-bound handler, e.g. an HTTP call, keeps all its slots busy),
and fetches ask for half the prefetch or more at a time instead of one by one.
On stop, messages already fetched are handled too; a message that waited a second or
more is reported in progress before its handler starts, so its ack_wait starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

__all__ = ["Ack", "Disposition", "Handler", "Nak", "PullWorker", "Term"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ack:
    """The message's work is done and its output is safe."""


@dataclass(frozen=True, slots=True)
class Nak:
    """Deliver the message again after `delay` seconds."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Term:
    """Never deliver this message again (its outcome was recorded elsewhere)."""

    reason: str = ""


Disposition = Ack | Nak | Term
Handler = Callable[[Msg], Awaitable[Disposition]]

#: delay before a message whose handler raised is offered again
CRASH_DELAY = 1.0
#: a prefetched message that waited this long is reported in progress before it is handled
PREFETCH_REFRESH = 1.0


class PullWorker:
    """Fetches batches from a durable pull consumer and runs at most `max_in_flight` at once."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        max_in_flight: int,
        batch: int = 64,
        fetch_timeout: float = 1.0,
        prefetch: int = 0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._limit = max_in_flight + max(0, prefetch)
        #: fetch again once this many fit: with prefetch, in batches rather than one by one
        self._refill = max(1, prefetch // 2)
        self._in_flight = 0
        self._ready: deque[tuple[Msg, float]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self.handled = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and handle until `stopping` is set, then wait for what is in flight."""
        psub = await self._js.pull_subscribe_bind(self._durable, self._stream)
        try:
            while not stopping.is_set():
                await self._room.wait()
                want = min(self._batch, self._limit - self._in_flight - len(self._ready))
                if want <= 0:
                    self._room.clear()
                    continue
                try:
                    msgs = await psub.fetch(want, timeout=self._fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # nothing to fetch within fetch_timeout
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    break
                except nats.errors.Error as e:
                    log.warning("%s: fetch failed (%r), retrying", self._durable, e)
                    await asyncio.sleep(0.5)
                    continue
                now = time.monotonic()
                self._ready.extend((msg, now) for msg in msgs)
                self._start_ready()
        finally:
            if self._tasks or self._ready:
                log.info(
                    "%s: finishing %d in-flight message(s)",
                    self._durable, len(self._tasks) + len(self._ready),
                )  # fmt: skip
            while self._tasks or self._ready:
                self._start_ready()
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()

    def _start_ready(self) -> None:
        """Start handlers for fetched messages while there is room, and say if more fit."""
        while self._ready and self._in_flight < self._max_in_flight:
            msg, fetched = self._ready.popleft()
            self._in_flight += 1
            task = asyncio.create_task(self._handle(msg, fetched))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._in_flight + len(self._ready) <= self._limit - self._refill:
            self._room.set()
        else:
            self._room.clear()

    async def _handle(self, msg: Msg, fetched: float) -> None:
        try:
            if time.monotonic() - fetched >= PREFETCH_REFRESH:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
            try:
                outcome: Disposition = await self._handler(msg)
            except Exception:
                log.exception("%s: handler failed; the message will be redelivered", self._durable)
                outcome = Nak(CRASH_DELAY)
            await _settle(msg, outcome)
            self.handled += 1
        except nats.errors.Error as e:
            # the ack was lost: JetStream redelivers after ack_wait (at-least-once)
            log.warning("%s: could not settle message: %r", self._durable, e)
        finally:
            self._in_flight -= 1
            self._start_ready()


async def _settle(msg: Msg, outcome: Disposition) -> None:
    if isinstance(outcome, Ack):
        await msg.ack()
    elif isinstance(outcome, Nak):
        await msg.nak(delay=outcome.delay if outcome.delay > 0 else None)
    else:
        await msg.term()
