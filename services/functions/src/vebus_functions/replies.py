"""A function's reply events: what a function returns becomes an event on the bus.

A reply is given as one JSON object, by any runtime (a Python function's return value or
`ctx.reply`, a command's standard output, an HTTP function's response):

- an object with `specversion` is a CloudEvent in the JSON format: its `type`, `subject`,
  `datacontenttype`, `dataschema`, `id`, `data` (or `data_base64`) and extensions are
  taken; a missing `type` is `com.vebus.function.<function>.v0`;
- any other object is the `data` of a reply of that default type.

vebus sets the rest: `source` `vebus://functions/<function>`, `time` (now), `id` (unless
given) derived from the Msg-Id, so a retried invocation's reply has the same one, and the
extension `vebushops`: one more than the event that caused it (vebus.names.HOPS_EXTENSION).
It is published to `vebus.events.functions.<function>` with the Nats-Msg-Id
`functions:<function>:<the cause's Msg-Id>:<n>`: JetStream stores it once however often
the invocation is retried within its duplicate window.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from typing import Any

from vebus import names
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError

__all__ = ["build_reply", "hops_of"]

_EXTENSION = re.compile(r"^[a-z0-9]{1,64}$")
_TAKEN = ("type", "subject", "datacontenttype", "dataschema", "id")
_SET_BY_VEBUS = ("specversion", "source", "time", "data", "data_base64", names.HOPS_EXTENSION)


def hops_of(event: CloudEvent) -> int:
    """How many functions the event has passed through (0 for any other event)."""
    value = event.extensions.get(names.HOPS_EXTENSION, "0")
    try:
        return max(0, int(value))
    except ValueError:
        return 0


def build_reply(
    raw: bytes | dict[str, Any], *, function: str, msg_id: str, hops: int
) -> CloudEvent:
    """The reply event from one reply object (InvalidEventError says what is wrong)."""
    if isinstance(raw, dict):
        doc: Any = raw
    else:
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise InvalidEventError(f"a reply of function {function} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidEventError(
            f"a reply of function {function} is a JSON {type(doc).__name__}: expected an "
            "object (its data, or a CloudEvent with specversion)"
        )
    if "specversion" not in doc:
        doc = {"specversion": "1.0", "data": doc}
    if doc.get("specversion") != "1.0":
        raise InvalidEventError(f"a reply of function {function}: specversion must be 1.0")
    attrs: dict[str, str] = {}
    for name in _TAKEN:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidEventError(
                f"a reply of function {function}: {name} must be a non-empty string"
            )
        attrs[name] = value
    extensions: dict[str, str] = {}
    for name, value in doc.items():
        if name in _TAKEN or name in _SET_BY_VEBUS or value is None:
            continue
        if not _EXTENSION.match(name):
            raise InvalidEventError(
                f"a reply of function {function}: {name!r} is no CloudEvents attribute name "
                "(lower-case letters and digits)"
            )
        if isinstance(value, bool):
            extensions[name] = "true" if value else "false"
        elif isinstance(value, str | int):
            extensions[name] = str(value)
        else:
            raise InvalidEventError(
                f"a reply of function {function}: extension {name!r} must be a string, an "
                "integer or a boolean"
            )
    extensions[names.HOPS_EXTENSION] = str(hops)
    content_type = attrs.get("datacontenttype")
    if "data_base64" in doc and doc["data_base64"] is not None:
        try:
            data = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEventError(
                f"a reply of function {function}: data_base64 is not base64"
            ) from None
    elif doc.get("data") is None:
        data = b""
    elif isinstance(doc["data"], str) and content_type and "json" not in content_type.lower():
        data = doc["data"].encode("utf-8")
    else:
        data = json.dumps(doc["data"], separators=(",", ":"), default=str).encode("utf-8")
        content_type = content_type or "application/json"
    return CloudEvent(
        id=attrs.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, msg_id)),
        source=names.FUNCTION_SOURCE_PREFIX + function,
        type=attrs.get("type") or f"{names.FUNCTION_TYPE_PREFIX}{function}.v0",
        time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        subject=attrs.get("subject"),
        dataschema=attrs.get("dataschema"),
        datacontenttype=content_type,
        extensions=extensions,
        data=data,
    )
