"""PullWorker against a real nats-server whose consumer disappears: `on_consumer_gone` is
called for the server's "409 Consumer Deleted" (deleted while a pull request waited) and
"503" (no consumer to take the request), and once it recreates the consumer the worker
carries on by itself; the backlog gauges of the metrics poll follow it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from tests.support.ledger import wait_until
from vebus.bus.consume import Ack, Disposition, PullWorker
from vebus.config import parse_config
from vebus.runtime import service
from vebus.runtime.service import ServiceContext, ServiceSettings
from vebus.runtime.telemetry import Telemetry

pytestmark = pytest.mark.integration

STREAM, DURABLE = "GONETEST", "worker"
CONSUMER = ConsumerConfig(
    durable_name=DURABLE, filter_subject="gone.x", ack_policy=AckPolicy.EXPLICIT, ack_wait=30
)


class Recorder:
    """A handler that acks and notes each message's body, and a hook that recreates the
    consumer and counts its calls."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.seen: list[str] = []
        self.recreated = 0
        self._changed = asyncio.Event()

    async def handle(self, msg: Msg) -> Disposition:
        self.seen.append(msg.data.decode())
        self._changed.set()
        return Ack()

    async def recreate(self) -> None:
        self.recreated += 1
        await self.js.add_consumer(STREAM, CONSUMER)

    async def wait_seen(self, want: set[str], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not want <= set(self.seen):
                self._changed.clear()
                await self._changed.wait()


async def _stream(nc: Client) -> JetStreamContext:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=["gone.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    return js


def _worker(js: JetStreamContext, rec: Recorder) -> PullWorker:
    return PullWorker(
        js,
        stream=STREAM,
        durable=DURABLE,
        handler=rec.handle,
        max_in_flight=4,
        fetch_timeout=30.0,  # the request waits while the consumer is deleted
        on_consumer_gone=rec.recreate,
    )


async def test_a_consumer_deleted_under_a_waiting_request_is_recreated_and_work_goes_on(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = await _stream(nc)
    await js.add_consumer(STREAM, CONSUMER)
    rec = Recorder(js)
    stopping = asyncio.Event()
    task = asyncio.create_task(_worker(js, rec).run(stopping))
    await js.publish("gone.x", b"before")
    await rec.wait_seen({"before"})
    await asyncio.sleep(0.3)  # idle: its long-poll request waits on the consumer
    with caplog.at_level(logging.WARNING, logger="vebus.bus.consume"):
        await js.delete_consumer(STREAM, DURABLE)
        await asyncio.sleep(1.0)
        await js.publish("gone.x", b"after")
        await rec.wait_seen({"after"})
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert rec.recreated == 1
    assert "consumer not found (pull request ended: 409 Consumer Deleted)" in caplog.text


async def test_a_worker_whose_consumer_does_not_exist_creates_it_through_the_hook(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = await _stream(nc)
    await js.publish("gone.x", b"waiting")  # in the work queue, no consumer yet
    rec = Recorder(js)
    stopping = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="vebus.bus.consume"):
        task = asyncio.create_task(_worker(js, rec).run(stopping))
        await rec.wait_seen({"waiting"})
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert rec.recreated == 1
    assert "consumer not found (pull request ended: 503 No Responders)" in caplog.text


async def test_the_backlog_gauge_follows_a_consumer_that_is_lost_and_created_again(
    nc: Client,
) -> None:
    """The metrics poll finds the consumer missing while its worker creates it again: the
    gauge goes away for that moment and comes back (it used to stay away for good), and
    when the worker stops the consumer is no longer polled."""
    js = await _stream(nc)
    await js.add_consumer(STREAM, CONSUMER)
    tel = Telemetry("test", "t1", "0")
    ctx = ServiceContext(
        settings=ServiceSettings(service="test", config_path=""),
        config=parse_config({"nats": {"url": "nats://unused:4222"}}, {}),
        nc=nc, js=js, stopping=asyncio.Event(), telemetry=tel,
    )  # fmt: skip
    rec = Recorder(js)
    hold = asyncio.Event()  # the consumer stays missing until this is set

    async def recreate_later() -> None:
        await hold.wait()
        await rec.recreate()

    def pending() -> float | None:
        labels = {"stream": STREAM, "consumer": DURABLE}
        return tel.metrics.registry.get_sample_value("vebus_consumer_pending", labels)

    stopping = asyncio.Event()
    tokens = tel.activate()
    try:
        worker = PullWorker(
            js, stream=STREAM, durable=DURABLE, handler=rec.handle, max_in_flight=4,
            fetch_timeout=30.0, on_consumer_gone=recreate_later,
        )  # fmt: skip
        task = asyncio.create_task(worker.run(stopping))
        poll = asyncio.create_task(service._poll(ctx, 0.1))
        await js.publish("gone.x", b"before")
        await rec.wait_seen({"before"})
        assert await wait_until(lambda: pending() == 0, 10, interval=0.05)
        await js.delete_consumer(STREAM, DURABLE)
        # polled while missing: no backlog to show
        assert await wait_until(lambda: pending() is None, 10, interval=0.05)
        await asyncio.sleep(0.5)  # several polls find it missing
        hold.set()
        await js.publish("gone.x", b"after")
        await rec.wait_seen({"after"})
        # created again: reported again
        assert await wait_until(lambda: pending() == 0, 10, interval=0.05)
        stopping.set()
        await asyncio.wait_for(task, 10)
        assert not tel.consumers
        # stopped: no longer reported
        assert await wait_until(lambda: pending() is None, 10, interval=0.05)
        ctx.stopping.set()
        await asyncio.wait_for(poll, 10)
    finally:
        Telemetry.deactivate(tokens)


async def test_pulling_goes_on_while_the_consumer_is_being_created_again(nc: Client) -> None:
    """In a cluster, a consumer whose leader was lost answers 503 until it elects another,
    and creating it meanwhile waits for the election (the API timeout, 5 s by default).
    The worker keeps asking while the hook runs: when the consumer answers again (here:
    created by someone else after a second), work goes on without waiting for the hook."""
    js = await _stream(nc)
    rec = Recorder(js)
    hook_returned = asyncio.Event()

    async def slow_recreate() -> None:  # an add_consumer stuck in an election
        await asyncio.sleep(20)
        hook_returned.set()

    worker = PullWorker(
        js, stream=STREAM, durable=DURABLE, handler=rec.handle, max_in_flight=4,
        fetch_timeout=30.0, on_consumer_gone=slow_recreate,
    )  # fmt: skip
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await js.publish("gone.x", b"waiting")
    await asyncio.sleep(1.0)  # no consumer: 503s, the hook started and hangs
    started = asyncio.get_running_loop().time()
    await js.add_consumer(STREAM, CONSUMER)  # the consumer is back (its leader elected)
    await rec.wait_seen({"waiting"}, timeout=10)
    took = asyncio.get_running_loop().time() - started
    assert not hook_returned.is_set()
    assert took < 5, f"took {took:.1f}s: the worker waited for the hook"
    stopping.set()
    await asyncio.wait_for(task, 10)  # stopping cancels the hook still running
