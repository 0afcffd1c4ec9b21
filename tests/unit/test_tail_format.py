"""What `vebus tail` prints for a message: a line, a CloudEvent in JSON, or the envelope."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.msg import Msg

from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.http import from_json
from vebus.cli.tail import format_envelope, format_json

EVENT = CloudEvent(
    id="42",
    source="https://vc01.example.com/sdk",
    type="com.vmware.vsphere.VmPoweredOffEvent.v0",
    subject="VmPoweredOffEvent",
    extensions={"eventclass": "event"},
    data=b'{\n  "Vm": {"Name": "web-01"}\n}',
)


def message(headers: dict[str, str] | None, data: bytes) -> Msg:
    client: Any = None
    return Msg(client, subject="vebus.events.vc01.VmPoweredOffEvent", data=data, headers=headers)


def test_json_is_the_cloudevent_on_one_line() -> None:
    msg = message(to_headers(EVENT, {"Nats-Msg-Id": "vc01:1:42"}), EVENT.data)
    line = format_json(msg)
    assert line is not None
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["data"] == {"Vm": {"Name": "web-01"}}
    assert "Nats-Msg-Id" not in line
    assert "vebus-wire" not in line
    assert from_json(line).attributes() == EVENT.attributes()


def test_the_envelope_is_the_nats_message() -> None:
    msg = message(to_headers(EVENT, {"Nats-Msg-Id": "vc01:1:42"}), EVENT.data)
    envelope = json.loads(format_envelope(msg))
    assert envelope["subject"] == "vebus.events.vc01.VmPoweredOffEvent"
    assert envelope["headers"]["Nats-Msg-Id"] == "vc01:1:42"
    assert envelope["data"] == EVENT.data.decode()


def test_a_message_that_is_no_cloudevent_has_no_json_form() -> None:
    assert format_json(message(None, b"garbage")) is None
