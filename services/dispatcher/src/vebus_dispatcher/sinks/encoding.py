"""An event's CloudEvents HTTP representation: binary mode (`ce-` headers) or structured.

This follows the HTTP protocol binding and the JSON event format of CloudEvents 1.0 as the
`cloudevents` SDK 2.x writes them (`cloudevents.core.bindings.http`): header values are
percent-encoded with the same safe characters, the structured body is `json.dumps` of the
attributes followed by `data`, so that the SDK reads back exactly what was sent. The SDK
itself is not used to write: it would invent a `time` for an event that has none, re-format
`time` (VEBA's seven fractional digits become six), reject extension names that the NATS
binding carries, and need `data` decoded into Python objects even in binary mode.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote

from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ErrorCode, PermanentDeliveryError

__all__ = ["STRUCTURED_CONTENT_TYPE", "binary", "event_class", "structured", "structured_body"]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE = "content-type"
_JSON_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$")
#: printable ASCII except space, double quote and percent (HTTP binding, 3.1.3.2)
_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_NEEDS_QUOTING = re.compile(f"[^{re.escape(_SAFE)}]")
_VSPHERE_TYPE = re.compile(r"^com\.vmware\.vsphere\.(?P<cls>.+?)\.v\d+$")


def event_class(event: CloudEvent) -> str:
    """The vSphere event class: `subject`, else the class in `type`, else `type`."""
    if event.subject:
        return event.subject
    if m := _VSPHERE_TYPE.match(event.type):
        return m.group("cls")
    return event.type


def binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body in binary content mode: attributes as `ce-` headers, data as is."""
    headers = {
        "ce-" + name: quote(value, safe=_SAFE) if _NEEDS_QUOTING.search(value) else value
        for name, value in event.attributes().items()
        if name != "datacontenttype"
    }
    if event.datacontenttype:
        headers[CONTENT_TYPE] = event.datacontenttype
    return headers, event.data


def structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body in structured content mode (`application/cloudevents+json`)."""
    return {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}, structured_body(event)


def structured_body(event: CloudEvent) -> bytes:
    """The event as one JSON object; JSON data embedded as JSON, text as a string,
    anything else as `data_base64`. PermanentDeliveryError if JSON data is not JSON."""
    doc: dict[str, Any] = dict(event.attributes())
    if event.data:
        ctype = event.datacontenttype
        if ctype is None or _JSON_TYPE.match(ctype):
            try:
                doc["data"] = json.loads(event.data)
            except ValueError as e:
                if ctype is not None:
                    raise PermanentDeliveryError(
                        f"event {event.id}: datacontenttype is {ctype} but data is not "
                        f"valid JSON ({e}); it cannot be sent in structured mode",
                        code=ErrorCode.INVALID_EVENT,
                    ) from None
                doc["data_base64"] = _b64(event.data)
        elif ctype.startswith("text/"):
            try:
                doc["data"] = event.data.decode("utf-8")
            except UnicodeDecodeError:
                doc["data_base64"] = _b64(event.data)
        else:
            doc["data_base64"] = _b64(event.data)
    return json.dumps(doc).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
