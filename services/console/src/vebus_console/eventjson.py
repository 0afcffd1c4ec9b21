"""A CloudEvent as the console shows and exports it: the JSON event format (structured mode).

What "copy as JSON" puts on the clipboard and each line of a history export: accepted
unchanged by `vebus routes test --event`.

`event_from_document` reads one back (the console's "try an event" and "which routes
match"), as `vebus routes test --event` reads it.

TODO(issue 16): the CloudEvent JSON binding (`vebus.bus.http.to_json` / `from_json`) is
being written; once it is on main, these two become calls to it and this module goes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgspec

from vebus.bus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError

__all__ = ["event_document", "event_from_document", "event_json"]

_KNOWN = ("time", "subject", "dataschema")

_decode = msgspec.json.Decoder()


def event_document(event: CloudEvent) -> dict[str, Any]:
    """The event as one JSON object: attributes (strings), then `data` or `data_base64`.

    JSON data stays JSON; `text/*` data that is UTF-8 is a string; anything else, or data
    that is not what its content type says, is `data_base64`, so no byte is lost.
    """
    doc: dict[str, Any] = dict(event.attributes())
    if not event.data:
        return doc
    if event.is_json():
        try:
            doc["data"] = _decode.decode(event.data)
            return doc
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
    elif (event.datacontenttype or "").lower().startswith("text/"):
        try:
            doc["data"] = event.data.decode("utf-8")
            return doc
        except UnicodeDecodeError:
            pass
    doc["data_base64"] = base64.b64encode(event.data).decode("ascii")
    return doc


def event_json(event: CloudEvent) -> bytes:
    """`event_document` encoded: one line of JSON."""
    return msgspec.json.encode(event_document(event))


def _attribute(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidEventError(f"attribute {name!r} must be a string, number or boolean")


def event_from_document(text: str | bytes) -> CloudEvent:
    """A CloudEvent from its JSON form; InvalidEventError says what is wrong."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidEventError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidEventError("expected a CloudEvent as a JSON object")
    missing = [n for n in ("specversion", "id", "source", "type") if not doc.get(n)]
    if missing:
        raise InvalidEventError(f"not a CloudEvent in JSON: missing {', '.join(missing)}")
    attrs = {
        k: _attribute(k, v)
        for k, v in doc.items()
        if k not in ("data", "data_base64") and v is not None
    }
    if attrs["specversion"] != "1.0":
        raise InvalidEventError(f"unsupported specversion {attrs['specversion']!r}")
    content_type = attrs.pop("datacontenttype", "application/json")
    if "data_base64" in doc:
        try:
            body = base64.b64decode(str(doc["data_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEventError("data_base64 is not valid base64") from None
    elif doc.get("data") is None:
        body = b""
    elif isinstance(doc["data"], str) and "json" not in content_type.lower():
        body = doc["data"].encode()
    else:
        body = msgspec.json.encode(doc["data"])
    return CloudEvent(
        id=attrs.pop("id"),
        source=attrs.pop("source"),
        type=attrs.pop("type"),
        specversion=attrs.pop("specversion"),
        datacontenttype=content_type,
        **{name: attrs.pop(name) for name in _KNOWN if name in attrs},
        extensions={k.lower(): v for k, v in attrs.items()},
        data=body,
    )
