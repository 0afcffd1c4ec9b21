"""What the webhook source takes from an HTTP request (pure): the one HTTP binding's event,
less the attributes reserved for vSphere events; the status for each refusal."""

from __future__ import annotations

import json

import pytest

from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_binary, to_json, to_structured
from vebus.errors import RequestRefusedError
from vebus_collector.webhook import parse_request

STRUCTURED = {"content-type": "application/cloudevents+json"}
CORE = {"specversion": "1.0", "id": "1", "source": "urn:x", "type": "t.x"}


def _structured(**doc: object) -> bytes:
    return json.dumps({**CORE, **doc}).encode()


def test_binary_mode_keeps_attributes_extensions_and_the_body() -> None:
    headers = {f"ce-{k}": v for k, v in CORE.items()} | {
        "ce-traceid": "abc",
        "ce-subject": "caf%C3%A9",
        "content-type": "text/plain",
    }
    ev = parse_request(headers, b"hello")
    assert (ev.id, ev.source, ev.type) == ("1", "urn:x", "t.x")
    assert ev.subject == "café"
    assert ev.extensions == {"traceid": "abc"}
    assert ev.datacontenttype == "text/plain"
    assert ev.data == b"hello"


def test_what_tail_json_prints_and_what_the_sink_sends_are_taken_as_they_are() -> None:
    ev = CloudEvent(
        id="a-1",
        source="urn:alerts",
        type="com.example.alert",
        time="2024-05-01T10:00:00.1234567Z",
        extensions={"priority": "3"},
        data=b'{"host":"esx01","ok":false}',
    )
    assert parse_request(STRUCTURED, to_json(ev)) == ev
    for encode in (to_binary, to_structured):
        assert parse_request(*encode(ev)) == ev


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (STRUCTURED, _structured(eventclass="event", data={"Key": 1})),
        ({f"ce-{k}": v for k, v in CORE.items()} | {"ce-eventclass": "eventex"}, b"{}"),
    ],
    ids=["structured", "binary"],
)
def test_eventclass_is_reserved_for_vsphere_events(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(RequestRefusedError) as e:
        parse_request(headers, body)
    assert e.value.status == 400
    assert e.value.reason.startswith("eventclass: reserved for the events vebus reads from")


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        (STRUCTURED, _structured(id=""), 400, "missing required attribute(s) id"),
        (STRUCTURED, _structured(ratio=0.5), 400, "ratio: 0.5 is not a CloudEvents Integer"),
        (STRUCTURED, b"[]", 400, "expected a CloudEvent as a JSON object"),
        ({"content-type": "application/json"}, b"{}", 400, "not a CloudEvent"),
        ({"content-type": "application/cloudevents-batch+json"}, b"[]", 415, "batch mode"),
        ({"content-type": "application/cloudevents+avro"}, b"", 415, "event format"),
    ],
)
def test_refusals_say_why_with_their_status(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    with pytest.raises(RequestRefusedError) as e:
        parse_request(headers, body)
    assert (e.value.status, reason in e.value.reason) == (status, True), e.value.reason
