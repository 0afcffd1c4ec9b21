"""The dispatcher as a real process: real nats-server, real HTTP sinks, real signals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from nats.aio.client import Client

from tests.support.dispatcher import (
    dead_letters,
    event,
    eventually,
    inject,
    lower,
    one_dead_letter,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import Received, RecordingSink
from tests.support.stack import Stack
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import from_http
from vebus.bus.publish import publish
from vebus.local.embedded import free_port
from vebus.names import ROUTES_STREAM, TRACEPARENT, dispatcher_durable, route_subject

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., Awaitable[RecordingSink]]]:
    started: list[RecordingSink] = []

    async def make(**kwargs: Any) -> RecordingSink:
        s = RecordingSink(**kwargs)
        started.append(s)
        await s.start()
        return s

    yield make
    for s in started:
        await s.stop()


def requests_for(sink: RecordingSink, event_id: str) -> list[Received]:
    return [r for r in sink.received if lower(r.headers).get("ce-id") == event_id]


# ------------------------------------------------------------------------------ encoding


async def test_binary_mode_sends_ce_headers_and_the_data_as_body(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    js = await start_dispatcher(
        stack, nc, [route("bin", sink.url, headers={"X-Api-Key": "secret-1"})]
    )
    plain = event(1)
    odd = event(2, subject='Vm "web 01" ünïcode 100%')
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await inject(js, "bin", plain, {TRACEPARENT: trace})
    await inject(js, "bin", odd)

    assert await sink.wait_for(lambda: len(sink.accepted) == 2), stack.logs()
    by_id = {lower(r.headers)["ce-id"]: r for r in sink.accepted}
    got = by_id["1"]
    h = lower(got.headers)
    assert got.method == "POST"
    assert h["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert h["ce-source"] == "https://vc01.example.com/sdk"
    assert h["ce-specversion"] == "1.0"
    assert h["ce-time"] == "2024-05-01T10:11:12.345678Z"
    assert h["ce-subject"] == "VmPoweredOffEvent"
    assert h["ce-eventclass"] == "event"
    assert h["content-type"] == "application/json"
    assert h["traceparent"] == trace
    assert h["x-api-key"] == "secret-1"
    assert "nats-msg-id" not in h
    assert got.body == plain.data

    # the SDK reads both back, percent-encoded subject included, and writes the same headers
    for sent in (plain, odd):
        rec = by_id[sent.id]
        parsed = ce_http.from_binary(
            ce_http.HTTPMessage(headers=lower(rec.headers), body=rec.body), JSONFormat()
        )
        assert parsed.get_subject() == sent.subject
        assert parsed.get_extension("vsphereapiversion") == "8.0.2.0"
        assert parsed.get_data() == json.loads(sent.data)
        again = ce_http.to_binary(parsed, JSONFormat())
        assert {k: v for k, v in lower(rec.headers).items() if k.startswith("ce-")} == {
            k: v for k, v in again.headers.items() if k.startswith("ce-")
        }


async def test_structured_mode_is_what_the_cloudevents_sdk_reads_and_writes(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    veba = json.loads((SAMPLES / "veba-VmPoweredOffEvent.json").read_text(encoding="utf-8"))
    sample = CloudEvent(
        id=veba["id"],
        source=veba["source"],
        type=veba["type"],
        time=veba["time"],  # seven fractional digits, as VEBA sends them
        extensions={"eventclass": veba["eventclass"]},
        data=json.dumps(veba["data"], separators=(",", ":")).encode(),
    )
    js = await start_dispatcher(stack, nc, [route("st", sink.url, mode="structured")])
    await inject(js, "st", sample)
    await inject(js, "st", event(7))

    assert await sink.wait_for(lambda: len(sink.accepted) == 2), stack.logs()
    for rec in sink.accepted:
        assert lower(rec.headers)["content-type"] == "application/cloudevents+json"
        assert not any(k.lower().startswith("ce-") for k in rec.headers)
    by_id = {json.loads(r.body)["id"]: r for r in sink.accepted}

    got = by_id[veba["id"]]
    parsed = ce_http.from_structured(
        ce_http.HTTPMessage(headers=lower(got.headers), body=got.body), JSONFormat()
    )
    assert parsed.get_type() == veba["type"]
    assert parsed.get_source() == veba["source"]
    assert parsed.get_extension("eventclass") == "event"
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_data() == veba["data"]  # embedded as JSON, not base64
    assert json.loads(got.body)["time"] == veba["time"]  # kept verbatim

    # what the SDK writes back for an event it can represent exactly is the same event
    got = by_id["7"]
    parsed = ce_http.from_structured(
        ce_http.HTTPMessage(headers=lower(got.headers), body=got.body), JSONFormat()
    )
    again = ce_http.to_structured(parsed, JSONFormat())
    sent, back = from_http(lower(got.headers), got.body), from_http(again.headers, again.body)
    assert sent.attributes() == back.attributes() == event(7).attributes()
    assert json.loads(sent.data) == json.loads(back.data) == json.loads(event(7).data)


# ------------------------------------------------------------------------------ failures


async def test_a_5xx_is_tried_max_attempts_times_then_dead_lettered(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    failing = await make_sink(status=500)
    js = await start_dispatcher(stack, nc, [route("r5", failing.url, max_attempts=3)])
    await inject(js, "r5", event(1))

    dl = await eventually(one_dead_letter(js, "r5"), "a dead letter", stack)
    await eventually(route_settled(js, "r5"), "the route emptied", stack)
    assert len(requests_for(failing, "1")) == 3
    assert dl.code == "HTTP_5XX"
    assert dl.status == 500
    assert dl.attempts == 3
    assert dl.exhausted == "max_attempts"
    assert dl.sink == "webhook"
    assert "500" in dl.error
    assert dl.first_attempt is not None
    assert dl.last_attempt is not None
    assert dl.first_attempt <= dl.last_attempt
    ev = dl.event()
    assert ev is not None
    assert ev.id == "1"
    assert ev.data == event(1).data
    assert dl.msg_id == "vc01:1:1:r5"


async def test_a_4xx_is_dead_lettered_after_one_attempt(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    refusing = await make_sink(status=400)
    js = await start_dispatcher(stack, nc, [route("r4", refusing.url, max_attempts=5)])
    await inject(js, "r4", event(1))

    dl = await eventually(one_dead_letter(js, "r4"), "a dead letter", stack)
    await eventually(route_settled(js, "r4"), "the route emptied", stack)
    assert len(requests_for(refusing, "1")) == 1
    assert (dl.code, dl.status, dl.attempts, dl.exhausted) == ("HTTP_4XX", 400, 1, "not_retryable")


async def test_a_429_is_retried_after_its_retry_after(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    throttling = await make_sink(response_headers={"Retry-After": "1"})
    throttling.responder = lambda rec: 429 if len(throttling.received) == 1 else 200
    js = await start_dispatcher(
        stack, nc, [route("r429", throttling.url, initial=0.05, max_backoff=10)]
    )
    await inject(js, "r429", event(1))

    assert await throttling.wait_for(lambda: len(throttling.accepted) == 1), stack.logs()
    first, second = throttling.arrivals[:2]
    assert second - first >= 0.9  # Retry-After: 1 beat the 0.05s backoff
    assert len(throttling.received) == 2
    await eventually(route_settled(js, "r429"), "the route emptied", stack)
    assert await dead_letters(js, "r429") == []


async def test_a_sink_slower_than_timeout_is_a_timeout(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    slow = await make_sink(delay=2.0)
    js = await start_dispatcher(stack, nc, [route("slow", slow.url, timeout=0.3, max_attempts=2)])
    await inject(js, "slow", event(1))

    dl = await eventually(one_dead_letter(js, "slow"), "a dead letter", stack)
    assert (dl.code, dl.status, dl.attempts, dl.exhausted) == ("TIMEOUT", None, 2, "max_attempts")
    assert "0.3s" in dl.error


async def test_connection_refused_is_a_connection_failure(stack: Stack, nc: Client) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/events"
    js = await start_dispatcher(stack, nc, [route("gone", nobody, max_attempts=2)])
    await inject(js, "gone", event(1))

    dl = await eventually(one_dead_letter(js, "gone"), "a dead letter", stack)
    assert (dl.code, dl.status, dl.attempts) == ("CONNECTION_FAILURE", None, 2)


async def test_an_invalid_message_is_dead_lettered_and_does_not_block_the_route(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    js = await start_dispatcher(stack, nc, [route("r", sink.url, max_in_flight=1)])
    await publish(js, route_subject("r"), b"garbage", {})
    await inject(js, "r", event(1))

    assert await sink.wait_for(lambda: sink.accepted_ids() == ["1"]), stack.logs()
    dl = await eventually(one_dead_letter(js, "r"), "a dead letter", stack)
    assert (dl.code, dl.exhausted, dl.body) == ("INVALID_EVENT", "not_retryable", b"garbage")
    assert dl.event() is None


# ------------------------------------------------------------------------------ isolation


async def test_a_failing_route_does_not_hold_back_another(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    bad = await make_sink(status=503, delay=0.5)  # slow and failing: its slots stay busy
    good = await make_sink()
    js = await start_dispatcher(
        stack,
        nc,
        [
            route("bad", bad.url, max_attempts=1000, initial=0.01, max_backoff=0.05,
                  max_in_flight=4),
            route("good", good.url),
        ],
    )  # fmt: skip
    for n in range(40):
        await inject(js, "bad", event(f"b{n}"))
    assert await bad.wait_for(lambda: len(bad.received) >= 8), stack.logs()

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n in range(20):
        await inject(js, "good", event(f"g{n}"))
    assert await good.wait_for(lambda: len(good.accepted) == 20, timeout=15), stack.logs()
    took = loop.time() - t0
    print(f"good route: 20 events delivered in {took:.2f}s while 'bad' kept failing")
    assert took < 15
    assert sorted(good.accepted_ids()) == sorted(f"g{n}" for n in range(20))
    assert len(bad.accepted) == 0
    assert await dead_letters(js, "good") == []


# ------------------------------------------------------------------------------ shutdown


async def test_sigterm_finishes_what_is_in_flight_and_exits_0(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    slow = await make_sink(delay=1.5)
    js = await start_dispatcher(stack, nc, [route("r", slow.url, max_in_flight=4)])
    for n in range(3):
        await inject(js, "r", event(n))
    assert await slow.wait_for(lambda: len(slow.received) == 3), stack.logs()

    status = await asyncio.to_thread(stack.stop, "dispatcher")  # SIGTERM
    assert status == 0, stack.logs()
    # all three answers were awaited and acknowledged: nothing is left to redeliver
    info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable("r"))
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    assert sorted(slow.accepted_ids()) == ["0", "1", "2"]


async def test_sigterm_also_delivers_the_messages_fetched_ahead(
    stack: Stack, nc: Client, make_sink: Callable[..., Awaitable[RecordingSink]]
) -> None:
    slow = await make_sink(delay=0.5)
    # 2 in flight and 2 more fetched ahead (prefetch = max_in_flight) when SIGTERM comes
    js = await start_dispatcher(stack, nc, [route("ahead", slow.url, max_in_flight=2)])
    for n in range(6):
        await inject(js, "ahead", event(n))
    assert await slow.wait_for(lambda: len(slow.received) == 2), stack.logs()
    await asyncio.sleep(0.2)
    info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable("ahead"))
    assert info.num_ack_pending == 4  # two being delivered, two waiting in the dispatcher

    status = await asyncio.to_thread(stack.stop, "dispatcher")  # SIGTERM
    assert status == 0, stack.logs()
    # everything it had fetched was delivered and acknowledged; the rest waits on the route
    delivered = sorted(slow.accepted_ids())
    assert len(delivered) >= 4, stack.logs()
    assert delivered == [str(n) for n in range(len(delivered))]
    info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable("ahead"))
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    assert info.num_pending == 6 - len(delivered)


# ------------------------------------------------------------------------------ console


async def test_the_console_sink_prints_one_line_or_one_json_object_per_event(
    stack: Stack, nc: Client
) -> None:
    routes = [
        {"name": "show", "sink": {"kind": "console"}},
        {"name": "dump", "sink": {"kind": "console", "format": "json"}},
    ]
    js = await start_dispatcher(stack, nc, routes)
    await inject(js, "show", event(11))
    await inject(js, "dump", event(12))

    async def printed() -> list[str] | None:  # stdout and the log share one file
        lines = stack.procs["dispatcher"].output().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("2024-05-01T", "{"))]
        return wanted if len(wanted) == 2 else None

    lines = await eventually(printed, "two printed events", stack)
    line = next(ln for ln in lines if ln.startswith("2024"))
    assert line == (
        "2024-05-01T10:11:12.345678Z com.vmware.vsphere.VmPoweredOffEvent.v0 "
        "https://vc01.example.com/sdk 11 VmPoweredOffEvent  test-11 on host-1 is powered off"
    )
    doc = json.loads(next(ln for ln in lines if ln.startswith("{")))
    assert (doc["id"], doc["data"]["Key"], doc["eventclass"]) == ("12", 12, "event")
    await eventually(route_settled(js, "show"), "route show emptied", stack)
    await eventually(route_settled(js, "dump"), "route dump emptied", stack)
