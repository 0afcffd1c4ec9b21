"""A pull-consumer loop with bounded concurrency and explicit ack, nak or term per message.

The handler looks at one message and returns what to do with it (`Ack`, `Nak(delay)`,
`Term`); the loop does it. A handler that raises is logged and its message nak'ed after a
short delay: JetStream's delivery count then counts the failure as an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self.handled = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and handle until `stopping` is set, then wait for what is in flight."""
        psub = await self._js.pull_subscribe_bind(self._durable, self._stream)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stopping.is_set():
                await self._room.wait()
                want = min(self._batch, self._max_in_flight - self._in_flight)
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
                for msg in msgs:
                    self._in_flight += 1
                    if self._in_flight >= self._max_in_flight:
                        self._room.clear()
                    task = asyncio.create_task(self._handle(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            if tasks:
                log.info("%s: finishing %d in-flight message(s)", self._durable, len(tasks))
                await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        try:
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
            self._room.set()


async def _settle(msg: Msg, outcome: Disposition) -> None:
    if isinstance(outcome, Ack):
        await msg.ack()
    elif isinstance(outcome, Nak):
        await msg.nak(delay=outcome.delay if outcome.delay > 0 else None)
    else:
        await msg.term()
