"""The CloudEvent NATS binding (binary mode) and subject naming."""

from __future__ import annotations

import pytest

from vebus.bus.cloudevent import CloudEvent, charset, from_headers, to_headers
from vebus.errors import InvalidEventError
from vebus.names import event_subject, route_subject, token


def _event() -> CloudEvent:
    return CloudEvent(
        id="9902",
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        time="2020-02-11T21:28:23.677595Z",
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event", "vsphereapiversion": "6.5"},
        data=b'{"Key": 9902, "Vm": {"Name": "test-01"}}',
    )


def test_binary_mode_headers_round_trip() -> None:
    ev = _event()
    headers = to_headers(ev, {"Nats-Msg-Id": "vc01:0:9902"})
    assert headers["ce-id"] == "9902"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert headers["ce-eventclass"] == "event"
    assert headers["content-type"] == "application/json"
    assert headers["vebus-wire"] == "1"
    assert headers["Nats-Msg-Id"] == "vc01:0:9902"
    assert "ce-datacontenttype" not in headers
    back = from_headers(headers, ev.data)
    assert back == ev


def test_match_input_has_attributes_and_decoded_data() -> None:
    doc = _event().as_match_input()
    assert doc["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert doc["eventclass"] == "event"
    assert doc["data"]["Vm"]["Name"] == "test-01"


def test_header_names_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in to_headers(_event()).items()}
    assert from_headers(headers, b"{}").id == "9902"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (None, "no headers"),
        ({"ce-id": "1", "ce-source": "s"}, "ce-type, ce-specversion"),
        ({"ce-id": "1", "ce-source": "s", "ce-type": "t", "ce-specversion": "0.3"}, "0.3"),
    ],
)
def test_invalid_messages_say_what_is_wrong(headers: dict[str, str] | None, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        from_headers(headers, b"")


def test_data_that_is_not_json() -> None:
    ev = CloudEvent(id="1", source="s", type="t", data=b"\xff not json")
    with pytest.raises(InvalidEventError, match="not valid JSON"):
        ev.as_match_input()


def test_subjects_have_four_tokens_and_safe_characters() -> None:
    assert event_subject("vc01", "VmPoweredOffEvent") == "vebus.events.vc01.VmPoweredOffEvent"
    assert event_subject("vc.01", "esx.problem.x") == "vebus.events.vc_01.esx_problem_x"
    assert len(event_subject("a b", "c>*d").split(".")) == 4
    assert token("") == "_"
    assert route_subject("vm-off") == "vebus.routes.vm-off"


def test_text_data_is_matched_as_text_and_other_types_not_at_all() -> None:
    text = CloudEvent(id="1", source="s", type="t", datacontenttype="text/plain; charset=utf-8",
                      data=b"disk almost full")  # fmt: skip
    assert text.as_match_input()["data"] == "disk almost full"
    binary = CloudEvent(id="2", source="s", type="t", datacontenttype="application/octet-stream",
                        data=b"\xff\x00")  # fmt: skip
    assert binary.as_match_input()["data"] is None
    cloud = CloudEvent(id="3", source="s", type="t", datacontenttype="application/cloudevents+json",
                       data=b'{"a": 1}')  # fmt: skip
    assert cloud.as_match_input()["data"] == {"a": 1}
    with pytest.raises(InvalidEventError, match="not UTF-8"):
        CloudEvent(id="4", source="s", type="t", datacontenttype="text/plain",
                   data=b"\xff").as_match_input()  # fmt: skip


def test_content_types_json_text_and_charset() -> None:
    for ct in (None, "application/json", "text/json", "application/vnd.x+json; charset=utf-8"):
        assert CloudEvent(id="1", source="s", type="t", datacontenttype=ct).is_json(), ct
    for ct in ("text/plain", "TEXT/CSV; charset=utf-8"):
        ev = CloudEvent(id="1", source="s", type="t", datacontenttype=ct)
        assert (ev.is_json(), ev.is_text()) == (False, True), ct
    latin_1 = 'text/plain; charset="ISO-8859-1"'
    latin = CloudEvent(id="5", source="s", type="t", datacontenttype=latin_1, data=b"caf\xe9")
    assert latin.as_match_input()["data"] == "café"
    assert charset("text/plain") == "utf-8"
    with pytest.raises(InvalidEventError, match="unknown charset 'nope'"):
        CloudEvent(id="6", source="s", type="t", datacontenttype="text/plain; charset=nope",
                   data=b"x").text()  # fmt: skip


def test_event_class_from_subject_then_type() -> None:
    assert _event().event_class() == "VmPoweredOffEvent"
    no_subject = CloudEvent(id="1", source="s", type="com.vmware.vsphere.VmCreatedEvent.v0")
    assert no_subject.event_class() == "VmCreatedEvent"
    assert CloudEvent(id="1", source="s", type="com.example.x").event_class() == "com.example.x"
