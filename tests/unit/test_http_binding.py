"""The CloudEvent over HTTP and as JSON (vebus.bus.http): round trips, the spec's rules,
and what the three old readers and writers disagreed on."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    from_binary,
    from_http,
    from_json,
    to_binary,
    to_json,
    to_structured,
)
from vebus.errors import InvalidEventError, UnsupportedModeError

CORE = {"specversion": "1.0", "id": "1", "source": "urn:x", "type": "t.x"}


def doc(**members: Any) -> bytes:
    return json.dumps({**CORE, **members}).encode()


def event(**fields: Any) -> CloudEvent:
    return CloudEvent(**{"id": "1", "source": "urn:x", "type": "t.x", **fields})


# ------------------------------------------------------------------ round trips (property)

#: attribute values the spec allows: no control characters (Cc), surrogates (Cs) or
#: noncharacters (unassigned, Cn); quotes, percent signs, spaces and emoji on purpose
values = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Cn"))
    | st.sampled_from(' "%\\;,=\u20ac\U0001f600'),
    max_size=20,
)
non_empty = values.filter(bool)
times = st.builds(
    lambda d, frac, zone: d.isoformat(timespec="seconds") + frac + zone,
    st.datetimes(),
    st.sampled_from(["", ".1", ".677595", ".6775950", ".123456789"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "z"]),
)
NOT_EXTENSIONS = {"data", *CORE, "time", "subject", "dataschema", "datacontenttype"}
extension_names = st.from_regex(r"[a-z0-9]{1,24}", fullmatch=True).filter(
    lambda n: n not in NOT_EXTENSIONS
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(values, inner, max_size=4),
    max_leaves=12,
)
json_data = st.tuples(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/json",
            "application/vnd.vmware+json",
            None,
        ]
    ),
    json_values.map(lambda v: msgspec.json.encode(v)),
)
text_data = st.sampled_from(
    ["text/plain", "text/csv; charset=utf-8", "text/plain; charset=iso-8859-1", "text/xml"]
).flatmap(
    lambda ct: st.tuples(
        st.just(ct),
        values.filter(lambda t: "8859" not in ct or all(ord(c) < 256 for c in t)).map(
            lambda t: t.encode("iso-8859-1" if "8859" in ct else "utf-8")
        ),
    )
)
binary_data = st.tuples(
    st.sampled_from(
        ["application/octet-stream", "image/png", None, "application/json", "text/plain"]
    ),
    st.binary(max_size=40),  # for a JSON or text type: bytes that are often neither
)
events = st.builds(
    lambda core, optional, extensions, content: CloudEvent(
        **core, **optional, extensions=extensions, datacontenttype=content[0], data=content[1]
    ),
    st.fixed_dictionaries({"id": non_empty, "source": non_empty, "type": non_empty}),
    st.fixed_dictionaries(
        {},
        optional={"time": times, "subject": non_empty, "dataschema": non_empty},
    ),
    st.dictionaries(extension_names, values, max_size=4),
    json_data
    | text_data
    | binary_data
    | st.tuples(st.sampled_from([None, "text/plain"]), st.just(b"")),
)


def as_read_back(ev: CloudEvent) -> CloudEvent:
    """What reading the JSON format gives for `ev`: JSON data with no content type gets
    `application/json` (JSON 3.1.2); every other event is given back unchanged."""
    if ev.datacontenttype is None and ev.data:
        try:
            ev.data.decode("utf-8")
            msgspec.json.decode(ev.data)
        except (UnicodeDecodeError, msgspec.DecodeError):
            return ev
        return msgspec.structs.replace(ev, datacontenttype="application/json")
    return ev


@settings(max_examples=300, deadline=None)
@given(events)
def test_structured_mode_reads_back_the_event_it_wrote(ev: CloudEvent) -> None:
    headers, body = to_structured(ev)
    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE}
    assert b"\n" not in body  # one line: `vebus tail --json`
    assert from_http(headers, body) == as_read_back(ev)


@settings(max_examples=300, deadline=None)
@given(events)
def test_binary_mode_reads_back_the_event_it_wrote(ev: CloudEvent) -> None:
    headers, body = to_binary(ev)
    ce = [v for k, v in headers.items() if k.startswith("ce-")]
    assert all(v.isascii() and v.isprintable() and " " not in v for v in ce)
    assert from_http(headers, body) == ev


@settings(max_examples=100, deadline=None)
@given(events)
def test_the_cloudevents_sdk_reads_what_is_written_as_the_same_event(ev: CloudEvent) -> None:
    expected = {k: v for k, v in ev.attributes().items() if k != "time"}
    for write, read in (
        (to_binary, sdk_http.from_binary),
        (to_structured, sdk_http.from_structured),
    ):
        headers, body = write(ev)
        got = read(sdk_http.HTTPMessage(headers=headers, body=body), JSONFormat())
        assert {k: v for k, v in got.get_attributes().items() if k != "time"} == expected
        if ev.time is not None:  # the SDK parses it into a datetime (microseconds)
            assert got.get_time() is not None
    written = json.loads(body)  # structured: data as the SDK reads it
    if "data" in written:
        assert got.get_data() == (json.loads(ev.data) if ev.is_json() else ev.text())
    elif "data_base64" in written:
        assert got.get_data() == ev.data


def test_json_data_keeps_its_text_but_not_its_whitespace() -> None:
    pretty = b'{\n  "Key": 1.50,\n  "Name": "caf\\u00e9 \\n"\n}\n'
    back = from_json(to_json(event(data=pretty)))
    assert back.data == b'{"Key":1.50,"Name":"caf\\u00e9 \\n"}'
    assert json.loads(back.data) == json.loads(pretty)


# ------------------------------------------------------------------ attribute types


def test_integers_and_booleans_are_their_canonical_strings_as_on_nats() -> None:
    ev = from_json(doc(priority=3, negative=-2147483648, flag=True, off=False, gone=None))
    assert ev.extensions == {
        "priority": "3",
        "negative": "-2147483648",
        "flag": "true",
        "off": "false",
    }
    assert ev == from_json(doc(priority="3", negative="-2147483648", flag="true", off="false"))
    assert b'"priority":"3"' in to_json(ev)  # written back as the string the bus carries


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            {"ratio": 1.5},
            "ratio: 1.5 is not a CloudEvents Integer (no fraction or exponent): "
            'send "1.5" as a string',
        ),
        ({"ratio": 2.0}, "ratio: 2.0 is not a CloudEvents Integer"),
        ({"big": 1e3}, "big: 1000.0 is not a CloudEvents Integer"),
        ({"big": 2147483648}, "big: 2147483648 is out of the CloudEvents Integer range"),
        ({"nested": {"a": 1}}, "nested: expected a string, an integer or a boolean, got an object"),
        ({"list": [1]}, "list: expected a string, an integer or a boolean, got an array"),
        ({"id": 5}, "id: expected a string, got 5"),
        ({"subject": True}, "subject: expected a string, got true"),
    ],
)
def test_attribute_values_that_are_no_cloudevents_type_are_refused(
    members: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEventError) as e:
        from_json(doc(**members))
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"Bad": "x"}, "Bad: attribute names are lower-case letters and digits only"),
        ({"a_b": "x"}, "a_b: attribute names are lower-case letters and digits only"),
        ({"id": ""}, "not a CloudEvent: missing required attribute(s) id"),
        ({"specversion": "0.3"}, "specversion: only 1.0 is supported, got '0.3'"),
        ({"subject": ""}, "subject: must not be empty when present"),
        ({"time": "yesterday"}, "time: expected an RFC 3339 timestamp"),
        ({"time": "2024-02-30T10:00:00Z"}, "time: expected an RFC 3339 timestamp"),
        ({"time": "2024-05-01"}, "time: expected an RFC 3339 timestamp"),
        ({"subject": "a\r\nNats-Msg-Id: x"}, "subject: U+000D is not allowed"),
        ({"x": "\u0085"}, "x: U+0085 is not allowed"),
        ({"x": "\ufdd0"}, "x: U+FDD0 is not allowed"),
        ({"datacontenttype": "json"}, "datacontenttype: expected a media type"),
    ],
)
def test_what_the_spec_forbids_is_refused_naming_the_attribute(
    members: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEventError) as e:
        from_json(doc(**members))
    assert str(e.value).startswith(message)


def test_a_long_extension_name_and_a_leap_second_are_accepted() -> None:
    ev = from_json(doc(averyveryverylongextensionname="x", time="2016-12-31T23:59:60Z"))
    assert ev.extensions == {"averyveryverylongextensionname": "x"}


def test_timestamps_are_kept_as_written() -> None:
    ev = from_json(doc(time="2020-02-11T21:28:23.6775950Z"))  # VEBA's seven digits
    assert ev.time == "2020-02-11T21:28:23.6775950Z"
    assert to_binary(ev)[0]["ce-time"] == "2020-02-11T21:28:23.6775950Z"


# ------------------------------------------------------------------ data


def test_data_beside_data_base64_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="data and data_base64: give one of them"):
        from_json(doc(data={"a": 1}, data_base64="AA=="))


def test_the_default_datacontenttype() -> None:
    # `data` and no datacontenttype: application/json, made explicit (JSON 3.1.2)
    ev = from_json(doc(data={"a": 1}))
    assert (ev.datacontenttype, ev.data) == ("application/json", b'{"a": 1}')
    assert to_binary(ev)[0]["content-type"] == "application/json"
    # a string there is a JSON string, not a document to parse again
    assert from_json(doc(data='{"a": 1}')).data == b'"{\\"a\\": 1}"'
    # no data: nothing is implied
    assert from_json(doc()).datacontenttype is None
    # data_base64 says nothing about its content type either
    ev = from_json(doc(data_base64="AAEC"))
    assert (ev.datacontenttype, ev.data) == (None, b"\x00\x01\x02")
    # null is a JSON payload of its own, not "no data"
    assert from_json(doc(data=None)).data == b"null"


def test_text_data_is_a_string_in_its_charset() -> None:
    ev = from_json(doc(data="caf\u00e9", datacontenttype="text/plain; charset=iso-8859-1"))
    assert ev.data == b"caf\xe9"
    assert json.loads(to_json(ev))["data"] == "caf\u00e9"
    assert from_json(doc(data="<a/>", datacontenttype="application/xml")).data == b"<a/>"
    with pytest.raises(InvalidEventError, match="text/plain is not JSON, so data must be"):
        from_json(doc(data={"a": 1}, datacontenttype="text/plain"))
    with pytest.raises(InvalidEventError, match="unknown charset 'nope'"):
        from_json(doc(data="x", datacontenttype="text/plain; charset=nope"))


@pytest.mark.parametrize(
    ("content_type", "data", "member"),
    [
        ("application/json", b'{"a": 1}', {"data": {"a": 1}}),
        (None, b"[1]", {"data": [1]}),
        ("text/plain", b"hi", {"data": "hi"}),
        ("application/octet-stream", b"\x00", {"data_base64": "AA=="}),
        ("application/xml", b"<a/>", {"data_base64": "PGEvPg=="}),
        # not what the content type says: kept, as Binary (never refused, never lost)
        ("application/json", b"not json", {"data_base64": "bm90IGpzb24="}),
        (None, b"\xff", {"data_base64": "/w=="}),
        ("text/plain", b"\xff", {"data_base64": "/w=="}),
    ],
)
def test_how_data_is_written(content_type: str | None, data: bytes, member: dict[str, Any]) -> None:
    written = json.loads(to_json(event(datacontenttype=content_type, data=data)))
    assert {k: v for k, v in written.items() if k in ("data", "data_base64")} == member


def test_invalid_data_members() -> None:
    with pytest.raises(InvalidEventError, match="data_base64: not valid base64"):
        from_json(doc(data_base64="!!"))
    with pytest.raises(InvalidEventError, match="data_base64: expected a base64 string"):
        from_json(doc(data_base64=5))


# ------------------------------------------------------------------ documents


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "expected a CloudEvent as a JSON object, got an array"),
        (b'"x"', "expected a CloudEvent as a JSON object, got a string"),
        (b"{nope", "not valid JSON"),
        (b'{"id": "\xff"}', "not valid JSON: not UTF-8"),
        (doc() + b"\n" + doc(), "not valid JSON"),  # two events: one at a time
        (
            json.dumps({"data": {"Vm": 1}}).encode(),
            "not a CloudEvent: missing required attribute(s) id, source, type, specversion",
        ),
    ],
)
def test_documents_that_are_not_one_cloudevent(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEventError) as e:
        from_json(body)
    assert str(e.value).startswith(message)


# ------------------------------------------------------------------ binary mode headers


def test_header_values_are_percent_encoded_as_the_http_binding_says() -> None:
    ev = event(subject="Euro \u20ac \U0001f600", extensions={"q": 'a"b%c'}, datacontenttype=None)
    headers, _ = to_binary(ev)
    assert headers["ce-subject"] == "Euro%20%E2%82%AC%20%F0%9F%98%80"  # HTTP 3.1.3.2's example
    assert headers["ce-q"] == "a%22b%25c"
    assert "content-type" not in headers  # no datacontenttype: no Content-Type


def test_header_values_are_read_leniently_where_the_binding_says_so() -> None:
    base = {f"ce-{k}": v for k, v in CORE.items()}
    ev = from_binary(
        {**base, "CE-Subject": "%e2%82%ac%41", "ce-quoted": '"a \\"b\\" c"', "Content-Type": "x/y"},
        b"",
    )
    assert ev.subject == "\u20acA"  # lower-case hex, needlessly encoded "A"
    assert ev.extensions == {"quoted": 'a "b" c'}  # an old sender's quoted-string
    assert ev.datacontenttype == "x/y"
    with pytest.raises(InvalidEventError, match="ce-subject: not UTF-8 once percent-decoded"):
        from_binary({**base, "ce-subject": "%C0%A0"}, b"")  # overlong: MUST be rejected
    with pytest.raises(InvalidEventError, match="ce-datacontenttype: in binary mode the"):
        from_binary({**base, "ce-datacontenttype": "text/plain"}, b"")
    with pytest.raises(InvalidEventError, match="ce-data: not an attribute name"):
        from_binary({**base, "ce-data": "x"}, b"")
    with pytest.raises(InvalidEventError, match=r"missing required attribute\(s\) ce-id$"):
        from_binary({k: v for k, v in base.items() if k != "ce-id"}, b"")
    with pytest.raises(InvalidEventError, match="Content-Type: expected a media type"):
        from_binary({**base, "content-type": "garbage"}, b"")


def test_the_mode_is_told_by_content_type() -> None:
    ev = event(data=b'{"a":1}', datacontenttype="application/json")
    _, body = to_structured(ev)
    with_charset = {"Content-Type": STRUCTURED_CONTENT_TYPE + "; charset=utf-8"}
    assert from_http(with_charset, body) == ev
    with pytest.raises(UnsupportedModeError, match="batch mode"):
        from_http({"content-type": BATCH_CONTENT_TYPE}, b"[]")
    with pytest.raises(UnsupportedModeError, match="application/cloudevents\\+avro"):
        from_http({"content-type": "application/cloudevents+avro"}, b"")
    with pytest.raises(InvalidEventError, match="not a CloudEvent: expected ce-specversion"):
        from_http({"content-type": "application/json"}, b"{}")


def test_what_the_sdk_writes_is_read_as_the_same_event() -> None:
    from cloudevents.core.v1.event import CloudEvent as SdkEvent

    sdk = SdkEvent(
        {
            "id": "7",
            "source": "urn:x",
            "type": "t.x",
            "subject": "caf\u00e9 \u20ac",
            "datacontenttype": "application/json",
            "region": "eu1",
        },
        {"a": [1, 2]},
    )
    for write in (sdk_http.to_binary, sdk_http.to_structured):
        msg = write(sdk, JSONFormat())
        ev = from_http(msg.headers, msg.body)
        assert (ev.id, ev.subject, ev.extensions) == ("7", "caf\u00e9 \u20ac", {"region": "eu1"})
        assert json.loads(ev.data) == {"a": [1, 2]}
        assert ev.time is not None  # the SDK made one up; it is RFC 3339
    binary_data = SdkEvent({"id": "8", "source": "s", "type": "t"}, b"\x00\xff")
    msg = sdk_http.to_structured(binary_data, JSONFormat())
    assert from_http(msg.headers, msg.body).data == b"\x00\xff"
    assert base64.b64decode(json.loads(msg.body)["data_base64"]) == b"\x00\xff"
