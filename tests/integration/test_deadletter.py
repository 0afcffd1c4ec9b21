"""The deadletter service as a process: messages past MaxDeliver become POISON dead letters."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import DeadLetter, iter_dead_letters
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

ROUTE = "r1"
DURABLE = names.dispatcher_durable(ROUTE)
ACK_WAIT = 1.0
MAX_DELIVER = 2


def config() -> dict[str, object]:
    return {
        "routes": [{"name": ROUTE, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/events"}}]
    }


async def publish_event(js: JetStreamContext, key: int) -> int:
    ev = CloudEvent(
        id=str(key),
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        data=json.dumps({"Key": key}).encode(),
    )
    headers = to_headers(ev, {MSG_ID: f"vc01:1:{key}:{ROUTE}"})
    ack = await js.publish(names.route_subject(ROUTE), ev.data, headers=headers)
    return int(ack.seq)


async def add_consumer(js: JetStreamContext) -> None:
    await js.add_consumer(
        names.ROUTES_STREAM,
        ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=names.route_subject(ROUTE),
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=MAX_DELIVER,
            ack_wait=ACK_WAIT,
        ),
    )


async def exhaust(js: JetStreamContext, durable: str = DURABLE) -> None:
    """Take the message MAX_DELIVER times without an answer, as a dispatcher that hangs."""
    psub = await js.pull_subscribe_bind(durable, names.ROUTES_STREAM)
    for n in range(1, MAX_DELIVER + 1):
        [msg] = await psub.fetch(1, timeout=10)
        assert msg.metadata.num_delivered == n
        await asyncio.sleep(ACK_WAIT + 0.5)
    # JetStream notices MaxDeliver when the consumer is next asked for messages
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=2)
    await psub.unsubscribe()


async def poison(js: JetStreamContext, timeout: float = 30.0) -> list[DeadLetter]:
    """The POISON dead letters, once there is one (empty after `timeout`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [dl async for dl in iter_dead_letters(js, code="POISON")]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.25)


async def gone_from_routes(js: JetStreamContext, seq: int, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            await js.get_msg(names.ROUTES_STREAM, seq=seq)
        except NotFoundError:
            return True
        await asyncio.sleep(0.2)
    return False


def check(dl: DeadLetter) -> None:
    ev = dl.event()
    assert ev is not None
    assert ev.id == "1001"
    assert dl.route == ROUTE
    assert dl.sink == "webhook"
    assert dl.exhausted == "max_deliveries"
    assert dl.attempts == MAX_DELIVER
    assert dl.msg_id == f"vc01:1:1001:{ROUTE}"
    assert DURABLE in dl.error
    assert dl.code == "POISON"
    # when the message entered the route, and when it was found
    assert dl.first_attempt is not None
    assert dl.last_attempt is not None
    first, last = (dt.datetime.fromisoformat(t) for t in (dl.first_attempt, dl.last_attempt))
    assert first <= last


async def test_max_deliveries_advisory_becomes_one_poison_dead_letter(
    stack: Stack, nc: Client
) -> None:
    stack.write_config(config())
    stack.start("deadletter")
    js = nc.jetstream()  # the service has created the streams
    await add_consumer(js)
    seq = await publish_event(js, 1001)

    await exhaust(js)

    found = await poison(js)
    assert len(found) == 1, stack.logs()
    check(found[0])
    assert await gone_from_routes(js, seq), stack.logs()
    await asyncio.sleep(1.0)
    assert len([dl async for dl in iter_dead_letters(js)]) == 1

    assert stack.stop("deadletter") == 0, stack.logs()


async def test_sweep_at_start_records_what_no_replica_heard(stack: Stack, nc: Client) -> None:
    stack.write_config(config())
    stack.start("deadletter")
    assert stack.stop("deadletter") == 0  # the streams exist; now nobody listens
    js = nc.jetstream()
    await add_consumer(js)
    seq = await publish_event(js, 1001)
    await exhaust(js)
    await js.get_msg(names.ROUTES_STREAM, seq=seq)  # a work queue keeps it

    stack.restart("deadletter")

    found = await poison(js)
    assert len(found) == 1, stack.logs()
    check(found[0])
    assert await gone_from_routes(js, seq), stack.logs()
    assert stack.stop("deadletter") == 0, stack.logs()
