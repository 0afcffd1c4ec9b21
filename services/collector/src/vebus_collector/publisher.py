"""Publishing a run of events in order with a bounded number of acks outstanding.

Each message goes out with `js.publish_async` (no round trip per event); at most `window`
wait for their ack at once. Acks are taken in publish order, and `on_ack` is called for
each message once it and every message before it are stored: the caller's position (and
so its checkpoint) only ever covers a stored prefix. A message whose ack does not come in
time, or comes as an error, is published again with `vebus.bus.publish.publish` (retries with
backoff); the same Nats-Msg-Id makes a second copy harmless.

Inside the service, each publish is observed (vebus.bus.observe): the event's PRODUCER span,
the start of its trace, starts at the publish and ends with its ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
from nats.js import JetStreamContext

from vebus.bus import observe
from vebus.bus.publish import OutgoingMessage, publish
from vebus_collector.errors import LeaseLostError

__all__ = ["DEFAULT_WINDOW", "EventPublisher", "JetStreamPublisher"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

#: acks outstanding at once (measured: see docs/collector.md)
DEFAULT_WINDOW = 256
#: seconds to wait for one ack before publishing the message again
ACK_TIMEOUT = 5.0


class EventPublisher(Protocol):
    """What the follower publishes through (a fake records in unit tests)."""

    async def publish(
        self,
        items: Sequence[tuple[OutgoingMessage, T]],
        on_ack: Callable[[T], None],
    ) -> None: ...


class JetStreamPublisher(Generic[T_contra]):
    """`EventPublisher` over JetStream async publishes."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = ACK_TIMEOUT,
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.js = js
        self.window = window
        self.ack_timeout = ack_timeout
        #: checked before each message: False stops publishing (a lost lease)
        self.allowed = allowed

    async def publish(
        self,
        items: Sequence[tuple[OutgoingMessage, T]],
        on_ack: Callable[[T], None],
    ) -> None:
        #: (message, tag, ack future, when its ack is due: monotonic)
        pending: deque[tuple[OutgoingMessage, T, asyncio.Future[Any], float]] = deque()
        observer = observe.current()
        try:
            for msg, tag in items:
                if self.allowed is not None and not self.allowed():
                    raise LeaseLostError("lease lost while publishing")
                while len(pending) >= self.window:
                    await self._settle(*pending.popleft(), on_ack)
                if observer is not None:
                    msg.observation = observer.publishing(msg.subject, msg.headers, len(msg.body))
                fut = await self.js.publish_async(msg.subject, msg.body, headers=dict(msg.headers))
                pending.append((msg, tag, fut, time.monotonic() + self.ack_timeout))
            while pending:
                await self._settle(*pending.popleft(), on_ack)
        finally:
            for msg, _, fut, _ in pending:
                if msg.observation is not None:
                    msg.observation.abandoned()
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut

    async def _settle(
        self,
        msg: OutgoingMessage,
        tag: T,
        fut: asyncio.Future[Any],
        due: float,
        on_ack: Callable[[T], None],
    ) -> None:
        if not fut.done():
            # asyncio.wait adds a callback; wait_for would start a task per message. The
            # wait ends when the ack was due, counted from the publish, not from now: a
            # refusal may never complete its future (nats-py 2.16 raises JetStream's error
            # inside its async-reply callback instead of setting it on the future, e.g.
            # "insufficient resources" from a full JetStream), and waiting a whole
            # ack_timeout for each message of the window in turn made a recovery take
            # ack_timeout per event
            await asyncio.wait((fut,), timeout=max(0.0, due - time.monotonic()))
        observation, msg.observation = msg.observation, None
        try:
            if not fut.done():
                raise TimeoutError
            fut.result()
        except (TimeoutError, nats.errors.Error):
            # not acknowledged (or refused): the synchronous path retries with backoff
            # and raises PublishError when JetStream keeps failing (it counts and traces)
            if observation is not None:
                observation.abandoned()
            await publish(self.js, msg.subject, msg.body, msg.headers, timeout=self.ack_timeout)
        except BaseException:
            if observation is not None:
                observation.abandoned()
            raise
        else:
            if observation is not None:
                observation.stored()
        on_ack(tag)
