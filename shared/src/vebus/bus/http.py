"""The CloudEvent over HTTP and as JSON: the CloudEvents HTTP binding and JSON event format.

Beside the NATS binding (`vebus.bus.cloudevent`), the one place a CloudEvent is written and
read outside NATS: by the webhook source and the webhook sink (binary or structured mode),
`vebus tail --json`, `vebus routes test --event`, `vebus dlq show --json` and the sinks that
send the event as JSON. CloudEvents 1.0: the HTTP protocol binding (cited "HTTP 3.1.3.2")
and the JSON event format ("JSON 3.1.1").

Binary mode (HTTP 3.1): each attribute but `datacontenttype` is a `ce-<name>` header, its
value percent-encoded as UTF-8 (space, `"`, `%` and all outside printable ASCII; HTTP
3.1.3.2); `datacontenttype` is the `Content-Type` header, `data` the body, as they are.
Reading takes the quotes off a double-quoted value, percent-decodes once and refuses bytes
that are not UTF-8.

Structured mode (HTTP 3.2): `Content-Type: application/cloudevents+json` and one JSON
object (`to_json`, one line). How `data` is written (JSON 3.1.1):

- JSON content type (`*/json`, `*/*+json`, or none, which means `application/json`) and
  the bytes are UTF-8 JSON: `data` holds that JSON as it is, its whitespace removed;
- a `text/*` content type and the bytes are text in its charset (UTF-8 by default):
  `data` holds the string;
- otherwise `data_base64`: the Binary form, which the format allows for any data, so
  writing never fails and never loses a byte (even data that is not what its content type
  says stays the same event).

Read back (JSON 3.1.2), `data_base64` gives its bytes; `data` gives the JSON text as sent
for a JSON content type, the string in the content type's charset for another one (which
then must be a string). Only one of `data` and `data_base64` may be present. `data` with no
`datacontenttype` sets it to `application/json` (3.1.2: the implied type is made explicit
when the event goes on in another binding); without `data` an absent one stays absent.

Attribute types. vebus holds every attribute as its canonical string, the form the NATS
binding carries (spec, "Type System": each type has one), and writes strings. Reading the
JSON format, a core attribute (String, URI, URI-reference or Timestamp) must be a JSON
string; an extension may also be a boolean (read as `true` / `false`) or an Integer: a JSON
number with no fraction and no exponent, from -2147483648 to 2147483647 (JSON 2.2), read in
decimal. A number with a fraction or an exponent, or out of that range, is no CloudEvents
type and is refused, as are objects and arrays: send it as a string. `null` means unset.
So `"priority": 3` and `"priority": "3"` are the same event, as they are on NATS and to the
filter.

Checked when reading (the spec's MUSTs): specversion `1.0`; id, source and type non-empty,
subject and dataschema too when present; attribute names of lower-case letters and digits,
not `data` (names longer than 20 characters are accepted: the limit is a SHOULD); values
without control characters, unpaired surrogates or Unicode noncharacters; `time` in RFC
3339; `datacontenttype` a media type. Errors are InvalidEventError naming the attribute
(`ce-<name>` in binary mode); UnsupportedModeError for batch mode or another format.

The `cloudevents` SDK (2.x, a dispatcher dependency) is not used: it invents a `time` for
an event that has none, re-formats `time` (VEBA's seven fractional digits become six), and
writes bytes only as `data_base64`, so JSON data would be decoded into Python objects and
encoded again for every event; and now the collector and the CLI read and write these
formats too, which the shared package would then have to depend on. The tests check that
the SDK reads what this writes as the same event, and that this reads what the SDK writes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import msgspec

from vebus.bus.cloudevent import CloudEvent, charset, is_json_type
from vebus.errors import InvalidEventError, UnsupportedModeError
from vebus.names import CE_PREFIX, CONTENT_TYPE

__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "from_binary",
    "from_http",
    "from_json",
    "to_binary",
    "to_json",
    "to_structured",
]

#: the JSON event format's media type: structured content mode (HTTP 3.2)
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
#: the JSON batch format's media type: batched content mode (HTTP 3.3), not supported
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
#: every CloudEvents format's media type starts so (HTTP 3: how a receiver tells the modes)
_FORMAT_PREFIX = "application/cloudevents"

_REQUIRED = ("specversion", "id", "source", "type")
_OPTIONAL = ("time", "subject", "dataschema", "datacontenttype")
_CORE = frozenset(_REQUIRED + _OPTIONAL)
#: not attributes: the JSON members that hold the data (JSON 3.1)
_DATA, _DATA_BASE64 = "data", "data_base64"
_NAME = re.compile(r"[a-z0-9]+\Z")
_INT32 = range(-(2**31), 2**31)
#: printable ASCII but space, double quote and percent stay as they are (HTTP 3.1.3.2)
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
#: what a String may not hold (spec, "Type System"): control characters, surrogates (a
#: Python str holds a pair as one character, so any left is unpaired), noncharacters
_NOT_IN_STRING = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef"
    + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17))
    + "]"
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:[Zz]|[+-](\d\d):(\d\d))\Z"
)
#: RFC 2045/7231 `type/subtype`, then parameters
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}[ \t]*(?:;.*)?\Z")
_QUOTED_PAIR = re.compile(r"\\(.)")

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_scalar = msgspec.json.Decoder(str | int | bool | None)
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


# ---------------------------------------------------------------- JSON event format


def to_json(event: CloudEvent) -> bytes:
    """The event in the JSON event format: one JSON object on one line (no newline)."""
    doc: dict[str, Any] = {name: getattr(event, name) for name in _REQUIRED}
    for name in _OPTIONAL:
        if (value := getattr(event, name)) is not None:
            doc[name] = value
    for name, value in event.extensions.items():
        doc.setdefault(name, value)
    if event.data:
        doc.update(_data_member(event))
    return _encoder.encode(doc)


def _data_member(event: CloudEvent) -> dict[str, Any]:
    """`data` (JSON or text) or `data_base64`, as the module docstring says."""
    if event.is_json():
        try:
            event.data.decode("utf-8")  # msgspec's format passes bad UTF-8 through
            return {_DATA: msgspec.Raw(msgspec.json.format(event.data, indent=-1))}
        except (UnicodeDecodeError, msgspec.DecodeError):
            pass
    elif event.is_text():
        try:
            text = event.text()
            if text.encode(charset(event.datacontenttype)) == event.data:
                return {_DATA: text}
        except (InvalidEventError, UnicodeEncodeError):
            pass
    return {_DATA_BASE64: base64.b64encode(event.data).decode("ascii")}


def from_json(document: bytes | str) -> CloudEvent:
    """The CloudEvent in a JSON event format document; InvalidEventError says what is wrong."""
    if isinstance(document, str):
        try:
            document = document.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError("not valid JSON: it holds an unpaired surrogate") from None
    try:
        document.decode("utf-8")  # msgspec.Raw would carry bad UTF-8 along
        members = _members.decode(document)
    except UnicodeDecodeError as e:
        raise InvalidEventError(
            f"not valid JSON: not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except msgspec.ValidationError:
        kind = _json_kind(_any.decode(document))
        raise InvalidEventError(f"expected a CloudEvent as a JSON object, got {kind}") from None
    except msgspec.DecodeError as e:
        raise InvalidEventError(f"not valid JSON: {e}") from None
    if _DATA in members and _DATA_BASE64 in members:
        raise InvalidEventError("data and data_base64: give one of them, not both")
    attributes: dict[str, str] = {}
    for name, raw in members.items():
        if name not in (_DATA, _DATA_BASE64):
            _check_name(name, "")
            value = _attribute(name, raw)
            if value is not None:
                attributes[name] = value
    content_type = attributes.pop("datacontenttype", None)
    if _DATA_BASE64 in members:
        data = _base64(members[_DATA_BASE64])
    elif _DATA in members:
        if content_type is None:
            content_type = "application/json"  # JSON 3.1.2
        data = _data(members[_DATA], content_type)
    else:
        data = b""
    return _event(attributes, content_type, data, "")


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _attribute(name: str, raw: msgspec.Raw) -> str | None:
    """An attribute's value as its canonical string (None: unset), by the module's rule."""
    try:
        value = _scalar.decode(raw)
    except msgspec.ValidationError:
        value = _any.decode(raw)
        if isinstance(value, float):
            raise InvalidEventError(
                f"{name}: {bytes(raw).decode()} is not a CloudEvents Integer (no fraction or "
                f'exponent): send "{bytes(raw).decode()}" as a string'
            ) from None
        expected = "a string" if name in _CORE else "a string, an integer or a boolean"
        got = "an object" if isinstance(value, dict) else _json_kind(value)
        raise InvalidEventError(f"{name}: expected {expected}, got {got}") from None
    if value is None or isinstance(value, str):
        return value
    if name in _CORE:
        raise InvalidEventError(f"{name}: expected a string, got {bytes(raw).decode()}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value not in _INT32:
        raise InvalidEventError(
            f"{name}: {value} is out of the CloudEvents Integer range (32 bits): "
            f'send "{value}" as a string'
        )
    return str(value)


def _data(raw: msgspec.Raw, content_type: str) -> bytes:
    """The bytes of a `data` member: JSON text as sent, or a string in its charset."""
    if is_json_type(content_type):
        return bytes(raw)
    value = _any.decode(raw)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidEventError(
            f"data: datacontenttype {content_type} is not JSON, so data must be a string "
            "(or give data_base64)"
        )
    name = charset(content_type)
    try:
        return value.encode(name)
    except LookupError:
        raise InvalidEventError(f"datacontenttype: unknown charset {name!r}") from None
    except UnicodeEncodeError as e:
        raise InvalidEventError(f"data: cannot be written in {name}: {e.reason}") from None


def _base64(raw: msgspec.Raw) -> bytes:
    value = _any.decode(raw)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidEventError("data_base64: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEventError("data_base64: not valid base64") from None


# ---------------------------------------------------------------- HTTP binding


def to_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body in binary content mode."""
    headers = {
        CE_PREFIX + name: quote(value, safe=_HEADER_SAFE)
        for name, value in event.attributes().items()
        if name != "datacontenttype"
    }
    if event.datacontenttype is not None:
        headers[CONTENT_TYPE] = event.datacontenttype
    return headers, event.data


def to_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body in structured content mode (the JSON event format)."""
    return {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}, to_json(event)


def from_http(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in an HTTP message, either mode (told by Content-Type, HTTP 3).

    InvalidEventError says what is wrong; UnsupportedModeError for batch mode or a
    structured format other than JSON.
    """
    content_type = next((v for k, v in headers.items() if k.lower() == CONTENT_TYPE), "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == STRUCTURED_CONTENT_TYPE:
        return from_json(body)
    if media.startswith(_FORMAT_PREFIX + "-batch"):
        raise UnsupportedModeError(
            f"batch mode ({media}) is not supported: send one event per request"
        )
    if media.startswith(_FORMAT_PREFIX):
        raise UnsupportedModeError(
            f"event format {media} is not supported: send {STRUCTURED_CONTENT_TYPE} or binary mode"
        )
    if any(name.lower().startswith(CE_PREFIX) for name in headers):
        return from_binary(headers, body)
    raise InvalidEventError(
        "not a CloudEvent: expected ce-specversion, ce-id, ce-source and ce-type headers "
        f"(binary mode) or Content-Type {STRUCTURED_CONTENT_TYPE} (structured mode)"
    )


def from_binary(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in a binary-mode HTTP message (header names in any case)."""
    attributes: dict[str, str] = {}
    content_type = None
    for raw_name, value in headers.items():
        name = raw_name.lower()
        if name == CONTENT_TYPE:
            content_type = value.strip()
        elif name.startswith(CE_PREFIX):
            attribute = name[len(CE_PREFIX) :]
            if attribute == "datacontenttype":
                raise InvalidEventError(
                    "ce-datacontenttype: in binary mode the Content-Type header carries it"
                )
            _check_name(attribute, CE_PREFIX)
            attributes[attribute] = _header_value(attribute, value)
    return _event(attributes, content_type, body, CE_PREFIX)


def _header_value(name: str, value: str) -> str:
    """Quotes off (RFC 7230 3.2.6), then one round of percent-decoding (HTTP 3.1.3.2)."""
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeError:
        raise InvalidEventError(
            f"{CE_PREFIX}{name}: not UTF-8 once percent-decoded (HTTP binding 3.1.3.2)"
        ) from None


# ---------------------------------------------------------------- checks, both formats


def _check_name(name: str, prefix: str) -> None:
    if name == _DATA:
        raise InvalidEventError(f"{prefix}{name}: not an attribute name (data is reserved)")
    if not _NAME.match(name):
        raise InvalidEventError(
            f"{prefix}{name}: attribute names are lower-case letters and digits only"
        )


def _event(
    attributes: dict[str, str], content_type: str | None, data: bytes, prefix: str
) -> CloudEvent:
    """The CloudEvent of checked names and read values, once the values are checked too."""
    if content_type is not None:
        attributes = {**attributes, "datacontenttype": content_type}
    for name, value in attributes.items():
        if found := _NOT_IN_STRING.search(value):
            where = "Content-Type" if prefix and name == "datacontenttype" else prefix + name
            raise InvalidEventError(
                f"{where}: U+{ord(found.group()):04X} is not allowed: attribute values "
                "hold no control characters, unpaired surrogates or noncharacters"
            )
    for name in ("subject", "dataschema"):
        if attributes.get(name) == "":
            raise InvalidEventError(f"{prefix}{name}: must not be empty when present")
    if "time" in attributes and not _is_rfc3339(attributes["time"]):
        raise InvalidEventError(
            f"{prefix}time: expected an RFC 3339 timestamp such as 2024-05-01T10:00:00Z, "
            f"got {attributes['time']!r}"
        )
    if content_type is not None and not _MEDIA_TYPE.match(content_type):
        where = "Content-Type" if prefix else "datacontenttype"
        raise InvalidEventError(
            f"{where}: expected a media type such as application/json, got {content_type!r}"
        )
    return CloudEvent.from_attributes(attributes, data, prefix=prefix)


def _is_rfc3339(value: str) -> bool:
    m = _RFC3339.match(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        dt.datetime(year, month, day, hour, minute, min(second, 59))  # 60: a leap second
    except ValueError:
        return False
    off_hour, off_minute = m.group(7), m.group(8)
    return second <= 60 and (off_hour is None or (int(off_hour) < 24 and int(off_minute) < 60))
