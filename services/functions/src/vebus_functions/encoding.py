"""The CloudEvent as the function runtimes hand it over: structured JSON (a command's
standard input) and the HTTP binary mode (an HTTP function, as VEBA sends it).

TODO(issue 16, binding): vebus.bus.http is the one CloudEvent HTTP/JSON binding
(`to_json`, `from_json`, `to_binary`, `from_http`); once it is on main, these become imports
from it. Until then this is the small subset functions need, in one place.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from vebus import names
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError

__all__ = ["STRUCTURED", "from_json", "reply_of_http", "to_binary", "to_json"]

#: the content type of a structured CloudEvent over HTTP
STRUCTURED = "application/cloudevents+json"


def to_json(event: CloudEvent) -> bytes:
    """The event in the CloudEvents JSON format (JSON data as JSON, text as a string,
    anything else as data_base64)."""
    doc: dict[str, Any] = dict(event.attributes())
    if event.data:
        if event.is_json():
            try:
                doc["data"] = json.loads(event.data)
            except ValueError:
                doc["data_base64"] = base64.b64encode(event.data).decode("ascii")
        elif (event.datacontenttype or "").lower().startswith("text/"):
            try:
                doc["data"] = event.data.decode("utf-8")
            except UnicodeDecodeError:
                doc["data_base64"] = base64.b64encode(event.data).decode("ascii")
        else:
            doc["data_base64"] = base64.b64encode(event.data).decode("ascii")
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def from_json(document: bytes | str, where: str) -> CloudEvent:
    """A CloudEvent from the JSON format (a file given to `vebus fn test`); InvalidEventError
    says what is wrong, naming `where`."""
    try:
        doc = json.loads(document)
    except ValueError as e:
        raise InvalidEventError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidEventError(f"{where}: expected a CloudEvent as a JSON object")
    missing = [k for k in ("specversion", "id", "source", "type") if not doc.get(k)]
    if missing:
        raise InvalidEventError(
            f"{where}: not a CloudEvent in the JSON format: missing {', '.join(missing)}"
        )
    attrs = {}
    for name, value in doc.items():
        if name in ("data", "data_base64") or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, str | int | float):
            raise InvalidEventError(f"{where}: attribute {name!r} must be a string")
        attrs[name.lower()] = str(value)
    if attrs["specversion"] != "1.0":
        raise InvalidEventError(f"{where}: unsupported specversion {attrs['specversion']!r}")
    content_type = attrs.pop("datacontenttype", None)
    if doc.get("data_base64") is not None:
        try:
            data = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEventError(f"{where}: data_base64 is not base64") from None
    elif doc.get("data") is None:
        data = b""
    elif isinstance(doc["data"], str) and content_type and "json" not in content_type:
        data = doc["data"].encode("utf-8")
    else:
        data = json.dumps(doc["data"]).encode("utf-8")
    known = {k: attrs.pop(k) for k in ("time", "subject", "dataschema") if k in attrs}
    return CloudEvent(
        id=attrs.pop("id"),
        source=attrs.pop("source"),
        type=attrs.pop("type"),
        specversion=attrs.pop("specversion"),
        datacontenttype=content_type or "application/json",
        extensions=attrs,
        data=data,
        **known,
    )


def to_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body in binary mode: `ce-<attribute>` headers (percent-encoded
    where HTTP needs it), `Content-Type` the datacontenttype, the data as the body."""
    headers = {
        names.CE_PREFIX + name: quote(value, safe="!#$&'()*+,/:;=?@[]^_`{|}~-.")
        for name, value in event.attributes().items()
        if name != "datacontenttype"
    }
    headers["Content-Type"] = event.datacontenttype or "application/json"
    return headers, event.data


def reply_of_http(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
    """The reply event an HTTP function answered with, as a reply object
    (vebus_functions.replies), or None: a structured CloudEvent body, or `ce-type` and the
    other `ce-` headers of the binary mode (Knative's way of replying)."""
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == STRUCTURED:
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None
    if names.CE_PREFIX + "type" not in lower:
        return None
    doc = {
        name[len(names.CE_PREFIX) :]: unquote(value)
        for name, value in lower.items()
        if name.startswith(names.CE_PREFIX)
    }
    doc["specversion"] = "1.0"
    if body:
        doc["datacontenttype"] = content_type or "application/json"
        try:
            doc["data"] = json.loads(body) if "json" in doc["datacontenttype"] else body.decode()
        except (ValueError, UnicodeDecodeError):
            doc["data_base64"] = base64.b64encode(body).decode("ascii")
    return doc
