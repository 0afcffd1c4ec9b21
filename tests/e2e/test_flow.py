"""The whole flow as processes: vcsim -> collector -> filter -> dispatcher -> HTTP sink,
and the dead-letter round trip through `vebus dlq`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http

from tests.conftest import Vcsim
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.e2e

VEBUS = str(Path(sys.executable).parent / "vebus")


def _config(
    vcsim: Vcsim, sink: RecordingSink, delivery: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass"}],
        "routes": [
            {
                "name": "vm-off",
                "match": {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
                "sink": {"kind": "webhook", "url": sink.url},
                "delivery": delivery or {},
            }
        ],
    }


def _vebus(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEBUS, *args, "--config", str(stack.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _power_off_first_vm(vcsim: Vcsim) -> tuple[str, int]:
    """Power off a VM; returns its name and the key of its VmPoweredOffEvent."""

    def run() -> tuple[str, int]:
        vs = VSphere(vcsim.url)
        try:
            vm = next(v for v in vs.vms() if v.runtime.powerState == "poweredOn")
            vs.power_off(vm)
            keys = [
                int(e.key)
                for e in vs.events()
                if type(e).__name__.endswith("VmPoweredOffEvent") and e.vm.name == vm.name
            ]
            return vm.name, max(keys)
        finally:
            vs.close()

    return await asyncio.to_thread(run)


async def test_vm_powered_off_reaches_the_http_sink_as_a_cloudevent(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink
) -> None:
    stack.write_config(_config(vcsim, sink))
    await asyncio.to_thread(stack.start)
    name, key = await _power_off_first_vm(vcsim)

    assert await sink.wait_for(lambda: len(sink.accepted) >= 1, timeout=60), stack.logs()
    req = sink.accepted[0]
    assert req.headers["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert req.headers["ce-source"] == vcsim.url
    assert req.headers["ce-id"] == str(key)
    assert req.headers["ce-eventclass"] == "event"
    data = json.loads(req.body)
    assert data["Vm"]["Name"] == name
    assert data["Vm"]["Vm"]["Type"] == "VirtualMachine"
    assert data["Key"] == key

    # the cloudevents SDK reads it as the same event, and writes it back unchanged
    message = ce_http.HTTPMessage({k.lower(): v for k, v in req.headers.items()}, req.body)
    event = ce_http.from_http_event(message)
    assert event.get_id() == str(key)
    assert event.get_type() == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert event.get_source() == vcsim.url
    assert event.get_extension("eventclass") == "event"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["Vm"]["Name"] == name
    again = ce_http.from_http_event(ce_http.to_binary_event(event))
    assert again.get_attributes() == event.get_attributes()
    assert again.get_data() == data
    # nothing else matched the route
    await asyncio.sleep(1)
    assert {r.headers["ce-type"] for r in sink.accepted} == {
        "com.vmware.vsphere.VmPoweredOffEvent.v0"
    }
    assert set((await asyncio.to_thread(stack.stop_all)).values()) == {0}


async def test_failed_event_is_dead_lettered_then_replayed(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink
) -> None:
    sink.status = 500
    delivery = {"max_attempts": 3, "backoff": {"initial": "100ms", "max": "500ms"}}
    stack.write_config(_config(vcsim, sink, delivery))
    await asyncio.to_thread(stack.start)
    name, key = await _power_off_first_vm(vcsim)

    async def dead_letters() -> list[dict[str, Any]]:
        out = await asyncio.to_thread(_vebus, stack, "dlq", "list", "--json")
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    deadline = asyncio.get_running_loop().time() + 60
    letters: list[dict[str, Any]] = []
    while not letters and asyncio.get_running_loop().time() < deadline:
        letters = await dead_letters()
        await asyncio.sleep(0.3)
    assert letters, stack.logs()
    assert len(sink.received) == 3  # max_attempts
    (dl,) = letters
    assert dl["route"] == "vm-off"
    assert dl["status"] == 500
    assert dl["code"] == "HTTP_5XX"
    assert dl["attempts"] == 3
    assert dl["event_id"] == str(key)

    sink.status = 200  # the sink recovers
    out = await asyncio.to_thread(_vebus, stack, "dlq", "replay", str(dl["id"]))
    assert out.returncode == 0, out.stderr
    assert await sink.wait_for(lambda: len(sink.accepted) == 1, timeout=30), stack.logs()
    delivered = sink.accepted[0]
    assert delivered.headers["ce-id"] == str(key)
    assert json.loads(delivered.body)["Vm"]["Name"] == name
    assert await dead_letters() == []
