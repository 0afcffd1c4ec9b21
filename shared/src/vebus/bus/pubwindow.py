"""Publishing a run of messages with a bounded window of publish acks outstanding.

Each message goes out with `js.publish_async` (no round trip per message); at most
`window` wait for their ack at once. Acks are taken in publish order, and `on_ack` is
called for each message once it and every message before it are stored, so a caller that
moves a position (the collector's checkpoint) only ever covers a stored prefix; a caller
for which order does not matter (`vebus.bus.publish.publish_all`: bulk loads)
simply waits for them all. A message whose ack does not come in time, or comes as an
error, is published again with `vebus.bus.publish.publish` (retries with backoff, the
typed errors: RouteFullError, PublishError); the same Nats-Msg-Id makes a second copy
harmless.

Measured (docs/collector.md, "Ingest"): 20,000 events of 1.5 KB to one stream, awaited
publishes gathered in batches of 256: 6,552/s; this window at 256: 13,184/s. Awaiting each
ack with `asyncio.wait_for` cost as much as the publish itself (a task per message): the
window waits on the futures directly.

Inside a service each publish is observed (vebus.bus.observe): its PRODUCER span starts at
the publish and ends with its ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from vebus.bus import observe
from vebus.bus.publish import OutgoingMessage, check_size, publish

__all__ = ["ACK_TIMEOUT", "DEFAULT_WINDOW", "PublishWindow"]

T = TypeVar("T")

#: acks outstanding at once (measured: see above)
DEFAULT_WINDOW = 256
#: seconds to wait for one ack before publishing the message again
ACK_TIMEOUT = 5.0


class PublishWindow:
    """Publishes runs of messages over JetStream async publishes, `window` acks at a time.

    `check`, called before each message, may raise to stop publishing (the collector's
    lost lease): the messages still in flight are abandoned, not acknowledged to `on_ack`.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = ACK_TIMEOUT,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.js = js
        self.window = window
        self.ack_timeout = ack_timeout
        self.check = check

    async def publish(
        self,
        items: Sequence[tuple[OutgoingMessage, T]],
        on_ack: Callable[[T], None],
    ) -> None:
        """Publish `items` in order; `on_ack(tag)` for each, in order, once stored."""
        await self._run(items, lambda tag, _ack: on_ack(tag))

    async def publish_acks(self, messages: Sequence[OutgoingMessage]) -> list[PubAck]:
        """Publish `messages` and return their acks, in order."""
        acks: list[PubAck] = []
        await self._run([(m, None) for m in messages], lambda _tag, ack: acks.append(ack))
        return acks

    async def _run(
        self,
        items: Sequence[tuple[OutgoingMessage, Any]],
        done: Callable[[Any, PubAck], None],
    ) -> None:
        #: (message, tag, ack future, when its ack is due: monotonic)
        pending: deque[tuple[OutgoingMessage, Any, asyncio.Future[Any], float]] = deque()
        observer = observe.current()
        try:
            for msg, tag in items:
                if self.check is not None:
                    self.check()
                while len(pending) >= self.window:
                    await self._settle(*pending.popleft(), done)
                check_size(self.js, msg.subject, msg.body, msg.headers)
                if observer is not None:
                    msg.observation = observer.publishing(msg.subject, msg.headers, len(msg.body))
                fut = await self.js.publish_async(msg.subject, msg.body, headers=dict(msg.headers))
                pending.append((msg, tag, fut, time.monotonic() + self.ack_timeout))
            while pending:
                await self._settle(*pending.popleft(), done)
        finally:
            for msg, _, fut, _due in pending:
                if msg.observation is not None:
                    msg.observation.abandoned()
                    msg.observation = None
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut

    async def _settle(
        self,
        msg: OutgoingMessage,
        tag: Any,
        fut: asyncio.Future[Any],
        due: float,
        done: Callable[[Any, PubAck], None],
    ) -> None:
        if not fut.done():
            # asyncio.wait adds a callback; wait_for would start a task per message. The
            # wait ends when the ack was due, counted from the publish, not from now: a
            # refusal may never complete its future (nats-py 2.16 raises JetStream's error
            # inside its async-reply callback instead of setting it on the future, e.g.
            # "insufficient resources" from a full JetStream), and waiting a whole
            # ack_timeout for each message of the window in turn made a recovery take
            # ack_timeout per event (test_full_disk: 116 s instead of 20 s)
            await asyncio.wait((fut,), timeout=max(0.0, due - time.monotonic()))
        observation, msg.observation = msg.observation, None
        try:
            if not fut.done():
                raise TimeoutError
            ack: PubAck = fut.result()
        except (TimeoutError, nats.errors.Error):
            # not acknowledged (or refused): the synchronous path retries with backoff
            # and raises PublishError or RouteFullError when JetStream keeps failing (it
            # counts and traces)
            if observation is not None:
                observation.abandoned()
            ack = await publish(self.js, msg.subject, msg.body, msg.headers,
                                timeout=self.ack_timeout)  # fmt: skip
        except BaseException:
            if observation is not None:
                observation.abandoned()
            raise
        else:
            if observation is not None:
                observation.stored()
        done(tag, ack)
