"""One JetStream publish, its ack awaited without a timer or a task per message.

nats-py's `js.publish` waits for each ack with `asyncio.wait_for` (a timer and a waiter
per message) and decodes it with the standard json module into a dataclass; in the
filter, whose work per event is one publish, that was a tenth of its CPU (py-spy,
loadtest/RESULTS.md "Profiles"). Here each connection gets one wildcard reply
subscription (`<inbox>.*`) and a table of the futures waiting on it; an ack is decoded with
msgspec; publishes that get no answer in time are failed by one sweeper per connection
(every SWEEP seconds, only while publishes wait) rather than by a timer each.

What a caller sees is what `js.publish` gives: a `PubAck`, or the nats-py errors
(`nats.js.errors.APIError` and its subclasses for a refusal, `NoRespondersError` when no
stream listens on the subject, `TimeoutError` when no ack comes, `ConnectionClosedError`),
so `vebus.bus.publish` keeps one policy for both (it uses this for a message's first
attempt and nats-py's own publish for the retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Mapping

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.errors import APIError

__all__ = ["SWEEP", "publish"]

#: how often waiting publishes are checked for their timeout
SWEEP = 0.25


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Answer(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool = False
    error: _Error | None = None


_decode = msgspec.json.Decoder(_Answer).decode


class _Replies:
    """The reply subscription of one connection and the publishes waiting on it."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self.count = 0
        self.sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self.waiting.pop(msg.subject[len(self.prefix) :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def wait(self, timeout: float) -> tuple[str, asyncio.Future[Msg]]:
        self.count += 1
        token = str(self.count)
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self.waiting[token] = (fut, time.monotonic() + timeout)
        if self.sweeper is None:
            self.sweeper = asyncio.create_task(self._sweep())
        return token, fut

    async def _sweep(self) -> None:
        """Fail what waited past its deadline; ends when nothing waits."""
        try:
            while self.waiting:
                await asyncio.sleep(SWEEP)
                now = time.monotonic()
                closed = self.nc.is_closed
                for token, (fut, deadline) in list(self.waiting.items()):
                    if closed or now >= deadline:
                        del self.waiting[token]
                        if not fut.done():
                            fut.set_exception(
                                nats.errors.ConnectionClosedError()
                                if closed
                                else nats.errors.TimeoutError()
                            )
        finally:
            self.sweeper = None


_REPLIES: weakref.WeakKeyDictionary[Client, _Replies] = weakref.WeakKeyDictionary()
_STARTING: weakref.WeakKeyDictionary[Client, asyncio.Future[_Replies]] = weakref.WeakKeyDictionary()


async def _replies(nc: Client) -> _Replies:
    replies = _REPLIES.get(nc)
    if replies is not None:
        return replies
    starting = _STARTING.get(nc)
    if starting is not None:  # another publish is subscribing: wait for it
        return await asyncio.shield(starting)
    fut: asyncio.Future[_Replies] = asyncio.get_running_loop().create_future()
    _STARTING[nc] = fut
    try:
        replies = _Replies(nc)
        await replies.start()
    except BaseException as e:
        fut.set_exception(e)
        with contextlib.suppress(BaseException):
            fut.exception()  # retrieved: the waiters get it from their own await
        raise
    finally:
        _STARTING.pop(nc, None)
    _REPLIES[nc] = replies
    fut.set_result(replies)
    return replies


async def publish(
    nc: Client, subject: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> PubAck:
    """Publish to JetStream and return its ack (see the module docstring for errors)."""
    replies = await _replies(nc)
    token, fut = replies.wait(timeout)
    try:
        await nc.publish(subject, body, reply=replies.prefix + token, headers=dict(headers))
        msg = await fut
    finally:
        replies.waiting.pop(token, None)
    if not msg.data:
        status = (msg.headers or {}).get("Status")
        if status == "503":
            raise nats.errors.NoRespondersError
        raise APIError(code=int(status or 0), description=(msg.headers or {}).get("Description"))
    try:
        answer = _decode(msg.data)
    except msgspec.DecodeError as e:
        raise APIError(description=f"unreadable publish ack: {e}") from None
    if answer.error is not None:
        APIError.from_error(msgspec.structs.asdict(answer.error))  # raises the subclass
    return PubAck(
        stream=answer.stream, seq=answer.seq, domain=answer.domain, duplicate=answer.duplicate
    )
