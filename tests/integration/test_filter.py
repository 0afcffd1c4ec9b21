"""The filter service as a process against a real nats-server: match, fan out, acknowledge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "veba" / "veba-VmPoweredOffEvent.json"


def vm_event(key: int, vm: str, user: str = "VSPHERE.LOCAL\\Administrator") -> CloudEvent:
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))["data"]
    data.update(Key=key, UserName=user)
    data["Vm"]["Name"] = vm
    return CloudEvent(
        id=str(key),
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event"},
        data=json.dumps(data).encode(),
    )


async def publish_events(nc: Client, events: list[CloudEvent]) -> None:
    js = nc.jetstream()
    for event in events:
        headers = to_headers(event, {MSG_ID: f"vc01:1:{event.id}"})
        await js.publish(
            "vebus.events.vc01.VmPoweredOffEvent", event.data, headers=headers, timeout=5
        )


async def wait_for(
    nc: Client, stream: str, subject: str, count: int, timeout: float = 20
) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await stream_messages(nc, stream, subject, direct=False)
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def settled(nc: Client, timeout: float = 20) -> bool:
    """Whether the filter has acknowledged everything in VEBUS_EVENTS."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        info = await js.consumer_info(names.EVENTS_STREAM, names.FILTER_DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return True
        await asyncio.sleep(0.1)
    return False


def route(name: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "sink": {"kind": "console"}}
    if match is not None:
        out["match"] = match
    return out


async def test_an_event_is_copied_once_to_each_matching_route(stack: Stack, nc: Client) -> None:
    stack.write_config(
        {
            "routes": [
                route("all"),
                route("web", {"data": {"Vm": {"Name": [{"prefix": "web-"}]}}}),
                route("admins", {"data": {"UserName": [{"prefix": "VSPHERE.LOCAL\\"}]}}),
                route("hosts", {"type": [{"prefix": "com.vmware.vsphere.Host"}]}),
            ]
        }
    )
    await asyncio.to_thread(stack.start, "filter")
    events = [vm_event(1, "web-01"), vm_event(2, "db-01", user="root"), vm_event(3, "web-02")]
    await publish_events(nc, events)
    copies = await wait_for(nc, names.ROUTES_STREAM, "vebus.routes.>", 7)
    assert await settled(nc), stack.logs()
    got = sorted((c.subject, c.headers[MSG_ID]) for c in copies)
    assert got == sorted(
        [
            ("vebus.routes.all", "vc01:1:1:all"),
            ("vebus.routes.all", "vc01:1:2:all"),
            ("vebus.routes.all", "vc01:1:3:all"),
            ("vebus.routes.web", "vc01:1:1:web"),
            ("vebus.routes.web", "vc01:1:3:web"),
            ("vebus.routes.admins", "vc01:1:1:admins"),
            ("vebus.routes.admins", "vc01:1:3:admins"),
        ]
    )
    # a copy is the event as it came: same body, same CloudEvent headers
    first = next(c for c in copies if c.headers[MSG_ID] == "vc01:1:1:web")
    assert first.data == events[0].data
    assert first.headers["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"


async def test_an_event_no_route_matches_is_acknowledged_and_dropped(
    stack: Stack, nc: Client
) -> None:
    stack.write_config({"routes": [route("web", {"data": {"Vm": {"Name": ["web-01"]}}})]})
    await asyncio.to_thread(stack.start, "filter")
    await publish_events(nc, [vm_event(1, "db-01"), vm_event(2, "web-01")])
    assert await settled(nc), stack.logs()
    copies = await wait_for(nc, names.ROUTES_STREAM, "vebus.routes.>", 1)
    assert [c.headers[MSG_ID] for c in copies] == ["vc01:1:2:web"]


async def test_an_invalid_event_is_dead_lettered(stack: Stack, nc: Client) -> None:
    stack.write_config({"routes": [route("all")]})
    await asyncio.to_thread(stack.start, "filter")
    js = nc.jetstream()
    await js.publish("vebus.events.vc01.Broken", b"{}", headers={"ce-id": "x"}, timeout=5)
    letters = await wait_for(nc, names.DLQ_STREAM, "vebus.dlq._invalid", 1)
    assert len(letters) == 1, stack.logs()
    assert await settled(nc), stack.logs()
    assert await stream_messages(nc, names.ROUTES_STREAM, "vebus.routes.>", direct=False) == []


async def test_a_thousand_routes_each_get_their_own_events(stack: Stack, nc: Client) -> None:
    routes = [route(f"vm-{i}", {"data": {"Vm": {"Name": [f"vm-{i}"]}}}) for i in range(1000)]
    routes.append(route("even-keys", {"data": {"Key": [{"numeric": ["<", 5]}]}}))
    stack.write_config({"routes": routes})
    await asyncio.to_thread(stack.start, "filter")
    picks = [3, 999, 0, 512, 3]
    await publish_events(nc, [vm_event(k, f"vm-{vm}") for k, vm in enumerate(picks)])
    copies = await wait_for(nc, names.ROUTES_STREAM, "vebus.routes.>", 10)
    assert await settled(nc), stack.logs()
    got = sorted(c.headers[MSG_ID] for c in copies)
    expected = [f"vc01:1:{k}:vm-{vm}" for k, vm in enumerate(picks)]
    expected += [f"vc01:1:{k}:even-keys" for k in range(5)]
    assert got == sorted(expected)
