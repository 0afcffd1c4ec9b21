"""Bad input on the public subjects and at the edges, each with a defined outcome and no
crash: messages on `vebus.events.>` that are not CloudEvents (garbage bytes, missing
required `ce-` headers, an unsupported specversion, invalid UTF-8 or non-JSON data where
JSON is declared) become INVALID_EVENT dead letters while the events around them are
delivered; an unknown event class is no bad input (the routes decide); a payload over the
server's max_payload is refused where it enters (the NATS client, the webhook source's
413) with an error that says so."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import unquote

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.chaos.conftest import Bus, MakeLedger, source
from tests.support.ledger import (
    DeadLetterRecord,
    Producer,
    dead_letters,
    eventually,
    settle,
    wait_until,
)
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.names import MSG_ID

pytestmark = pytest.mark.chaos

ROUTE = "bad"
SUBJECT = names.event_subject("chaos", "BadInput")


def good_headers(event_id: str, **extra: str) -> dict[str, str]:
    ev = CloudEvent(id=event_id, source=source(ROUTE), type="com.example.chaos.Bad.v0")
    return to_headers(ev, extra)


def bad_messages(run: str) -> dict[str, tuple[dict[str, str] | None, bytes]]:
    """name -> (headers, body) of messages that are not valid vebus CloudEvents."""
    out: dict[str, tuple[dict[str, str] | None, bytes]] = {
        "garbage, only a Msg-Id": ({MSG_ID: f"bad:{run}:garbage"}, os.urandom(256)),
        "invalid UTF-8 data": (good_headers(f"{run}-utf8", **{MSG_ID: f"bad:{run}:utf8"}),
                               b'{"a": "\xff\xfe\xfd"}'),
        "not JSON, declared JSON": (good_headers(f"{run}-json", **{MSG_ID: f"bad:{run}:json"}),
                                    b"{not json"),
        "specversion 0.3": (
            {**good_headers(f"{run}-spec", **{MSG_ID: f"bad:{run}:spec"}), "ce-specversion": "0.3"},
            b"{}",
        ),
    }  # fmt: skip
    for attr in ("id", "source", "type", "specversion"):
        h = good_headers(f"{run}-no-{attr}", **{MSG_ID: f"bad:{run}:no-{attr}"})
        del h[f"ce-{attr}"]
        out[f"missing ce-{attr}"] = (h, b"{}")
    return out


def raw_publish(port: int, user: str, password: str, subject: str, header_block: bytes,
                body: bytes) -> None:  # fmt: skip
    """Publish with the NATS protocol itself: header bytes no client library would send."""
    hdr = b"NATS/1.0\r\n" + header_block + b"\r\n"
    connect = {"verbose": False, "headers": True, "user": user, "pass": password}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(4096)  # INFO
        s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        s.sendall(f"HPUB {subject} {len(hdr)} {len(hdr) + len(body)}\r\n".encode())
        s.sendall(hdr + body + b"\r\nPING\r\n")
        reply = b""
        while b"PONG" not in reply and b"-ERR" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert b"PONG" in reply, reply


async def test_invalid_events_are_dead_lettered_and_the_rest_delivered(
    bus: Bus, js: JetStreamContext, nc: Client, ledger: MakeLedger
) -> None:
    sink = bus.sink(ROUTE)
    led = ledger("bad input among good events", sink)
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    restarts = {r.label: bus.cluster.restarts(r.label) for r in bus.cluster.replicas}
    before = max([d.seq for d in await dead_letters(js, names.DLQ_INVALID_ROUTE)], default=0)
    run = f"b{time.time_ns()}"
    producer = Producer(js, led, source=source(ROUTE), prefix=run, count=200, rate=100)
    producing = asyncio.create_task(producer.run())
    await asyncio.sleep(0.5)

    bad = bad_messages(run)
    for headers, body in bad.values():
        await js.publish(SUBJECT, body, headers=headers)
    await nc.publish(SUBJECT, os.urandom(128))  # no headers at all, core NATS: stored too
    # an unknown event class is routed like any other
    unknown = CloudEvent(id=f"{run}-unknown", source=source(ROUTE),
                         type="com.vmware.vsphere.NoSuchEventAnywhere.v0",
                         extensions={"eventclass": "event"}, data=b'{"Key": 1}')  # fmt: skip
    await js.publish(names.event_subject("chaos", "NoSuchEventAnywhere"), unknown.data,
                     headers=to_headers(unknown, {MSG_ID: f"bad:{run}:unknown"}))  # fmt: skip
    # invalid UTF-8 in a header value: the clients read it as U+FFFD, the event is valid
    block = (
        b"".join(f"{k}: {v}\r\n".encode() for k, v in good_headers(f"{run}-hdr-utf8").items())
        + b"ce-chaosnote: \xff\xfe bytes\r\n"
        + f"{MSG_ID}: bad:{run}:hdr\r\n".encode()
    )
    raw_publish(bus.cluster.nats_port, "vebus", bus.secrets["CHAOS_NATS_PASSWORD"], SUBJECT,
                block, b'{"ok": true}')  # fmt: skip
    led.sent += [f"{run}-unknown", f"{run}-hdr-utf8"]
    await producing

    expected = len(bad) + 1
    invalid: list[DeadLetterRecord] = []

    async def all_dead() -> bool:
        invalid[:] = [
            d for d in await dead_letters(js, names.DLQ_INVALID_ROUTE, after=before)
            if (d.msg_id or "").startswith(f"bad:{run}:") or d.msg_id is None
        ]  # fmt: skip
        return len(invalid) >= expected

    await eventually(all_dead, 60)
    await settle(led, js, sink, ROUTE, timeout=60)
    led.note(f"INVALID_EVENT dead letters: {len(invalid)} of {expected} bad messages")
    assert {d.code for d in invalid} == {"INVALID_EVENT"}, invalid
    assert len(invalid) == expected, [d.msg_id for d in invalid]
    by_id = {d.msg_id: d for d in invalid}
    for name, (headers, _) in bad.items():
        d = by_id.get((headers or {}).get(MSG_ID))
        assert d is not None, f"{name}: no dead letter"
        assert d.route == names.DLQ_INVALID_ROUTE
    note = [r for r in sink.accepted if r.headers.get("ce-id") == f"{run}-hdr-utf8"]
    # the HTTP binding percent-encodes header values
    assert note, "the event with invalid UTF-8 in a header was delivered"
    assert "\ufffd" in unquote(note[0].headers.get("ce-chaosnote", "")), "read as U+FFFD"
    assert {r.label: bus.cluster.restarts(r.label) for r in bus.cluster.replicas} == restarts
    led.check()


async def test_over_max_payload_is_refused_at_the_edge(bus: Bus, nc: Client) -> None:
    limit = nc.max_payload
    with pytest.raises(nats.errors.MaxPayloadError, match="payload"):
        await nc.jetstream().publish(SUBJECT, b"x" * (limit + 1), headers=good_headers("big"))

    collector = next(r for r in bus.cluster.of("collector") if bus.cluster.readyz(r))
    port = bus.cluster.readyz(collector)["webhook"]["port"]  # type: ignore[index]
    url = f"http://127.0.0.1:{port}/webhook"
    token = bus.secrets["CHAOS_WEBHOOK_TOKEN"]

    def post(body: bytes, event_id: str) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "ce-specversion": "1.0", "ce-id": event_id, "ce-source": source(ROUTE),
            "ce-type": "com.example.chaos.Webhook.v0",
        })  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    status, answer = await asyncio.to_thread(post, b'"' + b"x" * limit + b'"', "too-big")
    assert status == 413, answer
    assert "larger than" in str(answer.get("error")), answer
    # just under the source's own limit (max_payload minus its margin) is fine
    event_id = f"fits-{time.time_ns()}"
    status, answer = await asyncio.to_thread(post, b'{"fits": true}', event_id)
    assert status == 200, answer
    sink = bus.sink(ROUTE)
    assert await wait_until(lambda: event_id in sink.accepted_ids(), 30)


def _headers_size(headers: dict[str, str]) -> int:
    return len(b"NATS/1.0\r\n\r\n") + sum(len(f"{k}: {v}\r\n") for k, v in headers.items())


async def test_an_event_at_the_limit_does_not_loop_in_the_filter(
    bus: Bus, js: JetStreamContext, nc: Client, ledger: MakeLedger
) -> None:
    sink = bus.sink(ROUTE)
    led = ledger("event at max_payload, published past the collector", sink)
    event_id = f"edge-{time.time_ns()}"
    headers = good_headers(event_id, **{MSG_ID: f"bad:{event_id}"})
    body = b'"' + b"x" * (nc.max_payload - _headers_size(headers) - 2) + b'"'
    ack = await js.publish(SUBJECT, body, headers=headers)
    led.sent.append(event_id)

    async def outcome() -> bool:
        if event_id in sink.accepted_ids():
            return True
        for route in (ROUTE, names.DLQ_INVALID_ROUTE):
            if any(d.event_id == event_id for d in await dead_letters(js, route)):
                return True
        return False

    try:
        await eventually(outcome, 6)
        await settle(led, js, sink, ROUTE, timeout=1)
        assert await outcome(), "neither delivered nor dead-lettered: the filter keeps retrying"
        # its routed copy (the Msg-Id grows by ':<route>') would be over max_payload: a
        # TOO_LARGE dead letter without the body, pointing at the original in VEBUS_EVENTS
        (letter,) = [d for d in await dead_letters(js, ROUTE) if d.event_id == event_id]
        assert letter.code == "TOO_LARGE", letter
        assert f"sequence {ack.seq}" in letter.error, letter.error
        assert letter.body == b"", "the letter cannot hold a body larger than max_payload"
    finally:
        # it would take a filter replica down every ack_wait for the rest of the run
        await js.delete_msg(names.EVENTS_STREAM, ack.seq)


async def test_a_text_event_is_routed(bus: Bus, js: JetStreamContext, ledger: MakeLedger) -> None:
    led = ledger("text/plain data", bus.sink(ROUTE))
    event_id = f"text-{time.time_ns()}"
    ev = CloudEvent(id=event_id, source=source(ROUTE), type="com.example.chaos.Text.v0",
                    datacontenttype="text/plain", data=b"plain words, not JSON")  # fmt: skip
    await js.publish(SUBJECT, ev.data, headers=to_headers(ev, {MSG_ID: f"bad:{event_id}"}))
    led.sent.append(event_id)
    sink = bus.sink(ROUTE)

    async def outcome() -> bool:
        if event_id in sink.accepted_ids():
            return True
        invalid = await dead_letters(js, names.DLQ_INVALID_ROUTE)
        return any(d.event_id == event_id for d in invalid)

    await eventually(outcome, 10)
    await settle(led, js, sink, ROUTE, timeout=1)
    assert event_id in sink.accepted_ids(), led.report()
