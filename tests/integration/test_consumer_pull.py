"""PullWorker against a real nats-server: bounded concurrency, every message handled, a
failed handler's message redelivered, a stop that finishes what was fetched, and a
message published while the worker idles picked up without waiting for a new request."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, StreamConfig

from vebus.bus.consume import Ack, Disposition, PullWorker

pytestmark = pytest.mark.integration

STREAM, DURABLE = "PULLTEST", "worker"


async def _setup(nc: Client, count: int) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["pull.>"]))
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=1000
        ),
    )
    for n in range(count):
        await js.publish("pull.x", str(n).encode())


async def _settled(js: JetStreamContext, timeout: float = 5.0) -> ConsumerInfo:
    """The consumer's state once no ack is left pending, or after `timeout` as it is then."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(STREAM, DURABLE)
        if info.num_ack_pending == 0 or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(0.1)


async def test_handles_every_message_once_never_above_max_in_flight(nc: Client) -> None:
    await _setup(nc, 300)
    seen: list[int] = []
    busy = peak = 0
    failed_once: set[int] = set()
    want = 300
    enough = asyncio.Event()

    async def handler(msg: Msg) -> Disposition:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        try:
            await asyncio.sleep(0.002)
            n = int(msg.data)
            if n % 100 == 7 and n not in failed_once:
                failed_once.add(n)
                raise RuntimeError("a handler bug: the message comes back")
            seen.append(n)
            if len(seen) >= want:
                enough.set()
            return Ack()
        finally:
            busy -= 1

    js = nc.jetstream()
    worker = PullWorker(
        js, stream=STREAM, durable=DURABLE, handler=handler, max_in_flight=8, batch=16, prefetch=8
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.wait_for(enough.wait(), 30)
    # idle now: a new message must arrive through the open long-poll request, at once
    want, enough = 301, asyncio.Event()
    published = time.monotonic()
    await js.publish("pull.x", b"300")
    await asyncio.wait_for(enough.wait(), 10)
    assert time.monotonic() - published < 1.0
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert sorted(seen) == list(range(301))
    assert peak <= 8
    info = await _settled(js)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_a_stop_finishes_the_messages_already_fetched(nc: Client) -> None:
    await _setup(nc, 100)
    started: list[int] = []
    done: list[int] = []
    ten = asyncio.Event()

    async def handler(msg: Msg) -> Disposition:
        started.append(int(msg.data))
        if len(started) >= 10:
            ten.set()
        await asyncio.sleep(0.05)
        done.append(int(msg.data))
        return Ack()

    js = nc.jetstream()
    worker = PullWorker(
        js, stream=STREAM, durable=DURABLE, handler=handler, max_in_flight=4, prefetch=4
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.wait_for(ten.wait(), 10)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert sorted(done) == sorted(started)
    # nothing was left half done: what the worker took is acked, the rest waits untouched.
    # The server applies acks on the consumer's own queue, after it answered the last
    # publish: a consumer_info at once may still count the last acks as pending. A message
    # taken and dropped would stay pending until ack_wait (30 s), far past this wait.
    info = await _settled(js)
    assert info.num_ack_pending == 0
    assert info.num_pending == 100 - len(done)


async def test_an_idle_consumer_asks_less_often_and_still_gets_a_message_at_once(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that come back empty double the next one's expiry (up to IDLE_FETCH_MAX);
    a message published meanwhile is handled at once, and the expiry starts over."""
    from vebus.bus import consume

    monkeypatch.setattr(consume, "IDLE_FETCH_MAX", 0.8)
    await _setup(nc, 0)
    js = nc.jetstream()
    handled: list[float] = []

    async def handler(msg: Msg) -> Disposition:
        handled.append(time.monotonic())
        return Ack()

    worker = PullWorker(js, stream=STREAM, durable=DURABLE, handler=handler, max_in_flight=4,
                        fetch_timeout=0.2)  # fmt: skip
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    try:
        deadline = time.monotonic() + 10
        while worker._expiry < 0.8:  # 0.2 -> 0.4 -> 0.8 after two empty requests
            assert time.monotonic() < deadline, worker._expiry
            await asyncio.sleep(0.05)
        sent = time.monotonic()
        await js.publish("pull.x", b"late")
        while not handled:
            assert time.monotonic() < sent + 5
            await asyncio.sleep(0.01)
        assert handled[0] - sent < 0.5  # the long request delivered it: no wait for expiry
        assert worker._expiry == 0.2
    finally:
        stopping.set()
        await task
