"""The CloudEvent model and its NATS binding (binary mode: `ce-` headers, data in the body).

Every vebus message carries, besides the CloudEvents attributes:
- `vebus-wire`: the wire-format version (WIRE_VERSION) so later versions can change it;
- `Nats-Msg-Id`: the stable id JetStream deduplicates on (see `vebus.names`);
- `traceparent` (W3C) when the event is being traced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from vebus.errors import InvalidEventError
from vebus.names import CE_PREFIX, CONTENT_TYPE, WIRE_HEADER, WIRE_VERSION

__all__ = [
    "CloudEvent",
    "charset",
    "from_headers",
    "is_json_type",
    "is_text_type",
    "to_headers",
]


_REQUIRED = ("id", "source", "type", "specversion")
_OPTIONAL = ("time", "subject", "dataschema")
_CORE = frozenset({*_REQUIRED, *_OPTIONAL, "datacontenttype"})
#: `ce-` headers that carry no attribute: data is no attribute name, and in binary mode
#: the content-type header carries datacontenttype
_NOT_HEADERS = frozenset({"data", "datacontenttype"})
_json = msgspec.json.Decoder()
_VSPHERE_TYPE = re.compile(r"^com\.vmware\.vsphere\.(?P<cls>.+?)\.v\d+$")


def _media_type(content_type: str) -> str:
    """`type/subtype` of a content type, lower-cased, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    """`*/json` or `*/*+json`, parameters aside; None counts as `application/json`."""
    subtype = _media_type(content_type or "application/json").partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def is_text_type(content_type: str | None) -> bool:
    """`text/*` and not JSON (`text/json` is JSON)."""
    return (
        content_type is not None
        and _media_type(content_type).startswith("text/")
        and not is_json_type(content_type)
    )


def charset(content_type: str | None) -> str:
    """The `charset` parameter of a content type, lower-cased; `utf-8` when it has none."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"'):
            return value.strip().strip('"').lower()
    return "utf-8"


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A CloudEvents 1.0 event; `data` is kept as the raw bytes of the body."""

    id: str
    source: str
    type: str
    specversion: str = "1.0"
    time: str | None = None
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: str | None = "application/json"
    #: extension attributes, e.g. eventclass, vsphereapiversion (lower-case names)
    extensions: dict[str, str] = msgspec.field(default_factory=dict)
    data: bytes = b""

    @classmethod
    def from_attributes(
        cls, attributes: Mapping[str, str], data: bytes = b"", *, prefix: str = ""
    ) -> CloudEvent:
        """The event of these attributes (core ones by name, the others are extensions) and
        data; each binding checks first what else its format requires.

        InvalidEventError when a required attribute is missing or empty or specversion is
        not 1.0, naming it as the binding calls it: `prefix` + name (`ce-id`).
        """
        missing = [prefix + name for name in _REQUIRED if not attributes.get(name)]
        if missing:
            raise InvalidEventError(
                "not a CloudEvent: missing required attribute(s) " + ", ".join(missing)
            )
        if attributes["specversion"] != "1.0":
            raise InvalidEventError(
                f"{prefix}specversion: only 1.0 is supported, got {attributes['specversion']!r}"
            )
        return cls(
            id=attributes["id"],
            source=attributes["source"],
            type=attributes["type"],
            specversion=attributes["specversion"],
            time=attributes.get("time"),
            subject=attributes.get("subject"),
            dataschema=attributes.get("dataschema"),
            datacontenttype=attributes.get("datacontenttype"),
            extensions={k: v for k, v in attributes.items() if k not in _CORE},
            data=data,
        )

    def attributes(self) -> dict[str, str]:
        """Every attribute set on the event, extensions included, as strings."""
        out = {"id": self.id, "source": self.source, "type": self.type}
        out["specversion"] = self.specversion
        for name in ("time", "subject", "dataschema", "datacontenttype"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        return out

    def json_data(self) -> Any:
        """`data` decoded as JSON (InvalidEventError if it is not JSON)."""
        if not self.data:
            return None
        try:
            return _json.decode(self.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8
            raise InvalidEventError(f"event {self.id}: data is not valid JSON: {e}") from None

    def is_json(self) -> bool:
        """True when `data` is JSON: no content type (as in VEBA), or a JSON one.

        A JSON content type is `*/json` or `*/*+json`, parameters aside (JSON event
        format 3.1.1); with none, the event is treated as `application/json` (3.1.2).
        """
        return is_json_type(self.datacontenttype)

    def is_text(self) -> bool:
        """True when `data` is text: a `text/*` content type that is not JSON."""
        return is_text_type(self.datacontenttype)

    def text(self) -> str:
        """`data` decoded in the content type's charset, UTF-8 by default.

        InvalidEventError when the charset is unknown or the bytes are not in it.
        """
        name = charset(self.datacontenttype)
        try:
            return self.data.decode(name)
        except LookupError:
            raise InvalidEventError(f"event {self.id}: unknown charset {name!r}") from None
        except UnicodeDecodeError as e:
            raise InvalidEventError(
                f"event {self.id}: text data is not {name.upper()}: {e}"
            ) from None

    def event_class(self) -> str:
        """The vSphere event class: `subject`, else the class in `type`, else `type`."""
        if self.subject:
            return self.subject
        if m := _VSPHERE_TYPE.match(self.type):
            return m.group("cls")
        return self.type

    def as_match_input(self) -> dict[str, Any]:
        """The dict routes match against: the attributes, plus `data` decoded.

        JSON data is decoded (InvalidEventError if it is not JSON); `text/*` data is the
        text (in its charset); any other content type leaves `data` out of matching (None).
        """
        doc: dict[str, Any] = dict(self.attributes())
        if self.is_json():
            doc["data"] = self.json_data()
        elif self.is_text():
            doc["data"] = self.text()
        else:
            doc["data"] = None
        return doc


def to_headers(event: CloudEvent, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """NATS headers for `event` in binary content mode."""
    headers = {CE_PREFIX + k: v for k, v in event.attributes().items() if k != "datacontenttype"}
    if event.datacontenttype:
        headers[CONTENT_TYPE] = event.datacontenttype
    headers[WIRE_HEADER] = WIRE_VERSION
    if extra:
        headers.update(extra)
    return headers


def from_headers(headers: Mapping[str, str] | None, body: bytes) -> CloudEvent:
    """Parse a binary-mode NATS message; InvalidEventError names what is missing or wrong."""
    if not headers:
        raise InvalidEventError("message has no headers (expected CloudEvents ce- headers)")
    attrs: dict[str, str] = {}
    for raw_name, value in headers.items():
        name = raw_name.lower()
        if name == CONTENT_TYPE:
            attrs["datacontenttype"] = value
        elif name.startswith(CE_PREFIX) and name[len(CE_PREFIX) :] not in _NOT_HEADERS:
            attrs[name[len(CE_PREFIX) :]] = value
    return CloudEvent.from_attributes(attrs, body, prefix=CE_PREFIX)
