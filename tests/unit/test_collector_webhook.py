"""Parsing CloudEvents from HTTP requests for the webhook source (pure)."""

from __future__ import annotations

import json

import pytest

from vebus_collector.webhook import BadRequest, parse_request

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


def test_structured_data_base64_and_text_data() -> None:
    ev = parse_request(STRUCTURED, _structured(data_base64="AAEC"))
    assert ev.data == b"\x00\x01\x02"
    ev = parse_request(STRUCTURED, _structured(data="plain", datacontenttype="text/plain"))
    assert ev.data == b"plain"
    ev = parse_request(STRUCTURED, _structured(data="json string"))
    assert ev.data == b'"json string"'
    assert ev.datacontenttype == "application/json"
    ev = parse_request(STRUCTURED, _structured(flag=True, n=2))
    assert ev.extensions == {"flag": "true", "n": "2"}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"id": ""}, "missing required attribute(s): id"),
        ({"data": 1, "data_base64": "AA=="}, "not both"),
        ({"data_base64": "!!"}, "not valid base64"),
        ({"Bad_Name": "x"}, "lower-case letters and digits"),
        ({"nested": {"a": 1}}, "expected a string, number or boolean"),
        ({"time": "yesterday"}, "RFC 3339"),
        ({"eventclass": "event"}, "reserved"),
    ],
)
def test_malformed_structured_events_say_why(doc: dict[str, object], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_request(STRUCTURED, _structured(**doc))


def test_a_json_array_is_not_one_event() -> None:
    with pytest.raises(BadRequest, match="expected a JSON object"):
        parse_request(STRUCTURED, b"[]")
