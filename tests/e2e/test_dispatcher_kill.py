"""SIGKILL the dispatcher while events are in flight: after a restart, none is lost."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest
from nats.aio.client import Client

from tests.support.sink import Received, RecordingSink
from tests.support.stack import Stack
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.names import MSG_ID, ROUTES_STREAM, dispatcher_durable, route_subject

pytestmark = pytest.mark.e2e

EVENTS = 500
#: the dispatcher is killed when the sink has seen this many requests (some, not all)
KILL_AT = 150
ROUTE = "kill"


class Killer:
    """Kills the dispatcher (SIGKILL) once the sink has seen `kill_at` requests.

    The sink answers each request after a delay: the requests still waiting for their
    answer when it fires are in flight, and their answers go nowhere.
    """

    def __init__(self, sink: RecordingSink, kill_at: int) -> None:
        self.sink, self.kill_at = sink, kill_at
        self.target: Stack | None = None
        self.killed_at: int | None = None

    def __call__(self, rec: Received) -> None:
        armed = self.target is not None and self.killed_at is None
        if armed and len(self.sink.received) >= self.kill_at:
            assert self.target is not None
            self.killed_at = len(self.sink.received)
            self.target.procs["dispatcher"].signal(signal.SIGKILL)


async def test_a_killed_dispatcher_loses_no_event(stack: Stack, nc: Client) -> None:
    sink = RecordingSink(delay=0.02)
    killer = Killer(sink, KILL_AT)
    sink.on_request = killer
    await sink.start()
    try:
        stack.write_config(
            {
                "routes": [
                    {
                        "name": ROUTE,
                        "sink": {"kind": "webhook", "url": sink.url},
                        # ack_wait = timeout + 10s: how long a killed replica's messages wait
                        "delivery": {"timeout": "2s", "max_in_flight": 16, "max_attempts": 10,
                                     "backoff": {"initial": "50ms", "max": "1s"}},
                    }
                ]
            }
        )  # fmt: skip
        js = nc.jetstream()
        await ensure_streams(js, load_config(stack.config_path).stream_settings())
        await asyncio.to_thread(stack.start, "dispatcher")
        killer.target = stack  # armed only now: the kill cannot race the readiness check

        ids = [f"k{n}" for n in range(EVENTS)]
        batch = []
        for event_id in ids:
            ev = CloudEvent(
                id=event_id,
                source="https://vc01.example.com/sdk",
                type="com.vmware.vsphere.VmPoweredOffEvent.v0",
                data=b'{"Key": 1}',
            )
            headers = to_headers(ev, {MSG_ID: f"vc01:1:{event_id}:{ROUTE}"})
            batch.append(OutgoingMessage(route_subject(ROUTE), ev.data, headers))
        for start in range(0, EVENTS, 50):
            await publish_all(js, batch[start : start + 50])

        proc = stack.procs["dispatcher"]
        for _ in range(600):  # up to 30s; the sink kills it once KILL_AT requests came
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        died = proc.poll()
        assert died == -signal.SIGKILL, f"dispatcher was not killed ({died})\n{stack.logs()}"
        seen_at_kill = set(sink.accepted_ids())
        assert 0 < len(seen_at_kill) < EVENTS, "the kill did not land while events were in flight"

        await asyncio.to_thread(stack.restart, "dispatcher")
        everything = set(ids)
        ok = await sink.wait_for(lambda: set(sink.accepted_ids()) >= everything, timeout=60)
        missing = everything - set(sink.accepted_ids())
        assert ok, (
            f"{len(missing)} event(s) never delivered, e.g. {sorted(missing)[:5]}\n{stack.logs()}"
        )

        # every message is acknowledged in the end (the killed replica's unacknowledged ones
        # come back after ack_wait, which is when the duplicates arrive): the route is empty
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable(ROUTE))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, f"{info}\n{stack.logs()}"
            await asyncio.sleep(0.2)

        counts = Counter(sink.accepted_ids())
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"\nkilled after {killer.killed_at} requests ({len(seen_at_kill)} distinct events); "
            f"{EVENTS} delivered, {duplicates} duplicate deliveries "
            f"({sum(1 for c in counts.values() if c > 1)} events twice or more)"
        )
        assert set(counts) == everything  # nothing foreign, nothing missing

        assert await asyncio.to_thread(stack.stop, "dispatcher") == 0
    finally:
        await sink.stop()
