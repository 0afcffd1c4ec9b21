"""Another client waiting for its tasks (pyvmomi's WaitForTask, on its own session's default
PropertyCollector) does not hold back the collector, which waits on a PropertyCollector of
its own: each power event is stored in VEBUS_EVENTS within 1 s of its task's end, and the
watchdog's history re-read never fires (on vcsim 0.24, a follower on the default collector
saw none of them until that re-read, 1-7 s late: loadtest/waitfortask.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import pytest
from nats.aio.client import Client

from tests.conftest import Vcsim
from tests.support.collector import start_replica, vcenter_state, wait_until
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from tests.support.vsphere import VSphere
from vebus.names import EVENTS_STREAM

pytestmark = pytest.mark.integration

#: seconds from WaitForTask's return to the event stored in VEBUS_EVENTS
WITHIN = 1.0


async def _stored(nc: Client, cls: str, moref: str, after_seq: int) -> dt.datetime | None:
    """When the first `cls` event of VM `moref` after stream sequence `after_seq` was stored."""
    for m in await stream_messages(nc, EVENTS_STREAM, f"vebus.events.vc1.{cls}"):
        vm = ((json.loads(m.data or b"{}").get("Vm") or {}).get("Vm") or {}).get("Value")
        if int(m.seq or 0) > after_seq and vm == moref:
            assert m.time is not None
            return m.time
    return None


async def test_another_clients_wait_for_task_does_not_delay_the_collector(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    stack.write_config(
        {"vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass"}]}
    )
    port = start_replica(stack, "collector")
    proc = stack.procs["collector"]
    await wait_until(lambda: vcenter_state(port, "vc1").get("state") == "tailing", 30, "tail", proc)
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        vms = (await asyncio.to_thread(vs.vms))[:2]
        lags: list[float] = []
        for vm in vms:
            for task, cls in (
                (vs.power_off, "VmPoweredOffEvent"),
                (vs.power_on, "VmPoweredOnEvent"),
            ):
                seq = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
                await asyncio.to_thread(task, vm)  # WaitForTask on the test session's collector
                done = dt.datetime.now(dt.UTC)
                deadline = time.monotonic() + WITHIN + 2
                while (stored := await _stored(nc, cls, vm._moId, seq)) is None:
                    assert time.monotonic() < deadline, f"{cls} of {vm.name} not stored"
                    await asyncio.sleep(0.05)
                lags.append((stored - done).total_seconds())
    finally:
        await asyncio.to_thread(vs.close)
    assert max(lags) < WITHIN, f"lags from the task's end to the stored event: {lags}"
    state = vcenter_state(port, "vc1")
    assert state.get("resyncs", 0) == 0, state
    assert state["state"] == "tailing"
    assert "opening the tail again" not in proc.output()
