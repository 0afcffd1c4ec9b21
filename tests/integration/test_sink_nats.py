"""The nats sink: republish to a subject a stream stores (publish ack) or to plain NATS."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from tests.support.dispatcher import (
    event,
    eventually,
    inject,
    one_dead_letter,
    prepare,
    route,
    route_settled,
)
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus.bus.cloudevent import from_headers
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration


async def test_republished_events_land_in_a_stream_or_reach_live_subscribers(
    stack: Stack, nc: Client
) -> None:
    js = await prepare(
        stack,
        nc,
        [
            route("archive", sink={"kind": "nats", "subject": "archive.vsphere.{{ subject }}"}),
            route("live", sink={"kind": "nats", "subject": "live.vsphere"}),
            route("strict", sink={"kind": "nats", "subject": "nowhere.x", "require_stream": True},
                  max_attempts=2),
        ],
    )  # fmt: skip
    await js.add_stream(StreamConfig(name="ARCHIVE", subjects=["archive.>"], allow_direct=True))
    live: list[Msg] = []
    got_live = asyncio.Event()

    async def on_live(msg: Msg) -> None:
        live.append(msg)
        got_live.set()

    await nc.subscribe("live.>", cb=on_live)
    await asyncio.to_thread(stack.start, "dispatcher")
    await inject(js, "archive", event(1))
    await inject(js, "live", event(2))
    await inject(js, "strict", event(3))

    async def archived() -> list[object] | None:
        found = await stream_messages(nc, "ARCHIVE", "archive.>")
        return list(found) if found else None

    (stored,) = await eventually(archived, "the event in ARCHIVE", stack)
    assert stored.subject == "archive.vsphere.VmPoweredOffEvent"  # type: ignore[attr-defined]
    ev = from_headers(stored.headers, stored.data)  # type: ignore[attr-defined]
    assert (ev.id, ev.type, ev.extensions["eventclass"]) == (
        "1",
        "com.vmware.vsphere.VmPoweredOffEvent.v0",
        "event",
    )
    assert ev.data == event(1).data
    assert stored.headers[MSG_ID] == "vc01:1:1:archive"  # type: ignore[attr-defined]

    await asyncio.wait_for(got_live.wait(), 10)
    assert from_headers(live[0].headers, live[0].data).id == "2"

    # require_stream: no stream stores nowhere.x, so it is retried, then dead-lettered
    dl = await eventually(one_dead_letter(js, "strict"), "a dead letter", stack)
    assert (dl.code, dl.attempts, dl.exhausted) == ("SINK_ERROR", 2, "max_attempts")
    assert "no JetStream stream stores nowhere.x" in dl.error
    for name in ("archive", "live"):
        await eventually(route_settled(js, name), f"route {name} emptied", stack)
