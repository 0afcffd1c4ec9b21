"""A CloudEvent as the console shows, copies and exports it: the JSON event format.

What "copy as JSON" puts on the clipboard and each line of a history export, written and
read by the one JSON binding (`vebus.bus.http`), so `vebus routes test --event` reads it
unchanged. `event_document` is that JSON as a dict, for the page to indent.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import from_json, to_json

__all__ = ["event_document", "event_from_document", "event_json"]

_decode = msgspec.json.Decoder()


def event_json(event: CloudEvent) -> bytes:
    """The event in the JSON event format, one line."""
    return to_json(event)


def event_document(event: CloudEvent) -> dict[str, Any]:
    """`event_json` as a dict (attributes, then `data` or `data_base64`)."""
    doc: dict[str, Any] = _decode.decode(to_json(event))
    return doc


def event_from_document(text: str | bytes) -> CloudEvent:
    """A CloudEvent from its JSON form; InvalidEventError says what is wrong."""
    return from_json(text)
