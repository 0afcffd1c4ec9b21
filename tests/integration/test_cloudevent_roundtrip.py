"""An event seen with `vebus tail --json` is tested with `vebus routes test` and sent to
the webhook source as it is, all as a user runs them: real processes (nats-server, the
collector with its webhook source, the filter) and the real CLI."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus.bus.cloudevent import CloudEvent, from_headers, to_headers
from vebus.local.embedded import free_port
from vebus.names import EVENTS_STREAM, MSG_ID, event_subject, route_subject

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"
TOKEN = "t0ken-for-tests"

#: from a producer other than vCenter: odd characters in attributes, an integer-like
#: extension, JSON data with non-ASCII text
DISK_FULL = CloudEvent(
    id="disk-7",
    source="https://monitor.example.com/a b?q=%41",
    type="com.example.disk.full",
    time="2024-05-01T10:00:00.1234567+02:00",
    subject='sda "root" \u2014 caf\u00e9 \U0001f4be',
    extensions={"priority": "3", "region": "eu1"},
    data=b'{"host":"esx01","used":99.5,"severity":"critical","note":"\xc3\xa9t\xc3\xa9"}',
)
#: a vSphere event: it carries eventclass, which the webhook source reserves
VM_OFF = CloudEvent(
    id="9902",
    source="https://vc01.example.com/sdk",
    type="com.vmware.vsphere.VmPoweredOffEvent.v0",
    subject="VmPoweredOffEvent",
    extensions={"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
    data=b'{"Key":9902,"severity":"critical"}',
)
ROUTE = {
    "name": "critical",
    "match": {"type": [{"prefix": "com.example."}], "data": {"severity": ["critical"]}},
    "sink": {"kind": "console"},
}


async def vebus(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VEBUS),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_tail_json_to_routes_test_to_the_webhook_source(stack: Stack, nc: Client) -> None:
    port = free_port()
    config = stack.write_config(
        {"webhook": {"listen": f"127.0.0.1:{port}", "bearer_token": TOKEN}, "routes": [ROUTE]}
    )
    await asyncio.to_thread(stack.start, "collector", "filter")
    routed: list[Msg] = []
    both_routed = asyncio.Event()

    async def on_routed(msg: Msg) -> None:
        routed.append(msg)
        if len(routed) == 2:
            both_routed.set()

    await nc.subscribe(route_subject("critical"), cb=on_routed)

    tail = await asyncio.create_subprocess_exec(
        str(VEBUS),
        "tail",
        "--json",
        "--count",
        "2",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stderr is not None
        assert b"listening on" in await asyncio.wait_for(tail.stderr.readline(), 30)
        js = nc.jetstream()
        # a third: --count 2 prints two lines, whatever else arrives meanwhile
        for ev, source in ((DISK_FULL, "lab"), (VM_OFF, "vc01"), (VM_OFF, "vc02")):
            headers = to_headers(ev, {MSG_ID: f"{source}:1:{ev.id}"})
            await js.publish(event_subject(source, ev.type), ev.data, headers=headers)
        out, _ = await asyncio.wait_for(tail.communicate(), 30)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    disk_line, vm_line = lines

    # the line is what routes test takes, unchanged; the route matches it
    code, stdout, stderr = await vebus(
        "routes",
        "test",
        "--route",
        "critical",
        "--config",
        str(config),
        "--event",
        "-",
        stdin=disk_line.encode() + b"\n",
    )
    assert code == 0, stderr
    assert stdout.startswith("matched: route critical"), stdout

    # the webhook source takes it too, and stores the same event
    url = f"http://127.0.0.1:{port}/webhook"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/cloudevents+json"}
    async with aiohttp.ClientSession() as http:
        r = await http.post(url, data=disk_line, headers=headers)
        assert r.status == 200, await r.text()
        assert (await r.json())["subject"] == "vebus.events.webhook.com_example_disk_full"
        # ... but not a vSphere event's line: eventclass is vebus's own
        r = await http.post(url, data=vm_line, headers=headers)
        assert r.status == 400
        assert (await r.json())["error"].startswith("eventclass: reserved")

    stored = await stream_messages(nc, EVENTS_STREAM, "vebus.events.webhook.>")
    assert len(stored) == 1
    assert stored[0].headers is not None
    assert stored[0].headers[MSG_ID] == f"webhook:{DISK_FULL.source}:{DISK_FULL.id}"
    assert from_headers(stored[0].headers, stored[0].data or b"") == DISK_FULL

    # the filter routed it as routes test said: the original and the webhook's copy
    await asyncio.wait_for(both_routed.wait(), 15)
    assert [from_headers(m.headers, m.data) for m in routed] == [DISK_FULL, DISK_FULL]
