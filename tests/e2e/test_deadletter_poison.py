"""A dispatcher that crashes on one event: that event becomes a POISON dead letter, and the
route's other events are delivered meanwhile.

The crash is a real one: the sink kills the dispatcher process (SIGKILL) when that event
arrives. A sink that hangs or drops the connection would not do: the dispatcher's
per-attempt timeout and its HTTP client turn those into TIMEOUT and CONNECTION_FAILURE
outcomes, so the attempts do not end "without an outcome" and the event is dead-lettered
as TIMEOUT or CONNECTION_FAILURE, not POISON.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass

import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.support.sink import Received, RecordingSink
from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import DeadLetter, iter_dead_letters
from vebus.names import MSG_ID

pytestmark = pytest.mark.e2e

ROUTE = "crashy"
POISON_ID = "666"


@dataclass
class CrashingSink(RecordingSink):
    """Accepts every event, except that POISON_ID kills the dispatcher (once armed)."""

    target: Stack | None = None
    crashes: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("ce-id") == POISON_ID and self.target is not None:
            self.crashes += 1
            self.target.procs["dispatcher"].signal(signal.SIGKILL)
            body = await request.read()
            self.received.append(
                Received(request.method, request.path, dict(request.headers), body)
            )
            self._changed.set()
            await asyncio.sleep(5)  # the answer goes nowhere: its dispatcher is dead
            return web.Response(status=200)
        return await super()._handle(request)


async def publish_events(js: JetStreamContext, ids: list[str]) -> None:
    for event_id in ids:
        ev = CloudEvent(
            id=event_id,
            source="https://vc01.example.com/sdk",
            type="com.vmware.vsphere.VmPoweredOffEvent.v0",
            data=json.dumps({"Key": int(event_id)}).encode(),
        )
        await js.publish(
            names.event_subject("vc01", "VmPoweredOffEvent"),
            ev.data,
            headers=to_headers(ev, {MSG_ID: f"vc01:1:{event_id}"}),
        )


async def poison(js: JetStreamContext, timeout: float) -> list[DeadLetter]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [dl async for dl in iter_dead_letters(js)]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.25)


async def test_a_crashing_event_becomes_poison_and_the_route_goes_on(
    stack: Stack, nc: Client
) -> None:
    sink = CrashingSink()
    await sink.start()
    try:
        stack.write_config(
            {
                "routes": [
                    {
                        "name": ROUTE,
                        "sink": {"kind": "webhook", "url": sink.url},
                        # ack_wait = timeout + 10s: when the crashed attempt's message returns
                        "delivery": {"max_attempts": 1, "timeout": "1s", "max_in_flight": 1},
                    }
                ]
            }
        )
        await asyncio.to_thread(stack.start, "filter", "dispatcher")
        js = nc.jetstream()
        sink.target = stack
        before = [str(n) for n in range(100, 105)]
        await publish_events(js, before)
        assert await sink.wait_for(lambda: len(sink.accepted) == 5, 30), stack.logs()
        await asyncio.sleep(0.5)  # their acks reach JetStream

        await publish_events(js, [POISON_ID])
        assert await sink.wait_for(lambda: sink.crashes == 1, 30), stack.logs()
        await asyncio.to_thread(stack.procs["dispatcher"].proc.wait, 10)  # type: ignore[union-attr]
        await asyncio.to_thread(stack.restart, "dispatcher")

        after = [str(n) for n in range(200, 205)]
        await publish_events(js, after)
        assert await sink.wait_for(lambda: len(sink.accepted) == 10, 30), stack.logs()
        delivered_at = asyncio.get_running_loop().time()
        assert [dl async for dl in iter_dead_letters(js)] == []  # not blocked behind it

        [dl] = await poison(js, timeout=40)
        poisoned_at = asyncio.get_running_loop().time()
        assert poisoned_at > delivered_at
        ev = dl.event()
        assert ev is not None
        assert ev.id == POISON_ID
        assert (dl.route, dl.code, dl.exhausted) == (ROUTE, "POISON", "max_deliveries")
        assert dl.msg_id == f"vc01:1:{POISON_ID}:{ROUTE}"
        assert sorted(sink.accepted_ids()) == sorted(before + after)
        assert [r.headers.get("ce-id") for r in sink.received].count(POISON_ID) == 1
        assert stack.stop("dispatcher") == 0, stack.logs()
        assert stack.stop("filter") == 0, stack.logs()
    finally:
        await sink.stop()
