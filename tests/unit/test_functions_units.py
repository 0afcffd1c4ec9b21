"""Functions: the pure parts (reply events, the JSON and HTTP forms of an event, the
`functions:` config, quantiles from histograms, the routes status with functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vebus import names
from vebus.bus.cloudevent import CloudEvent
from vebus.cli.fn import merge_quantile
from vebus.config import parse_config
from vebus.errors import ConfigError, InvalidEventError
from vebus.routing.source import ReplicaStatus
from vebus_functions.http_runtime import reply_of_http
from vebus_functions.replies import build_reply, hops_of
from vebus_functions.stats import BOUNDS, FunctionStats


def test_a_dict_becomes_the_data_of_a_reply_with_a_stable_id() -> None:
    a = build_reply(b'{"vm": "web-01"}', function="tag", msg_id="functions:tag:m:0", hops=1)
    b = build_reply({"vm": "web-01"}, function="tag", msg_id="functions:tag:m:0", hops=1)
    assert a.id == b.id, "a retried invocation's reply is the same event"
    assert (a.source, a.type, a.datacontenttype) == (
        "vebus://functions/tag", "com.vebus.function.tag.v0", "application/json",
    )  # fmt: skip
    assert json.loads(a.data) == {"vm": "web-01"}
    assert a.extensions == {names.HOPS_EXTENSION: "1"}


def test_a_structured_reply_keeps_its_type_subject_and_extensions() -> None:
    doc = {"specversion": "1.0", "type": "com.example.Tagged.v0", "subject": "vm-42",
           "id": "mine", "source": "ignored", "priority": 3, "urgent": True,
           "datacontenttype": "text/plain", "data": "done"}  # fmt: skip
    ev = build_reply(json.dumps(doc).encode(), function="f", msg_id="m", hops=2)
    assert (ev.type, ev.subject, ev.id, ev.source) == (
        "com.example.Tagged.v0", "vm-42", "mine", "vebus://functions/f",
    )  # fmt: skip
    assert ev.extensions == {"priority": "3", "urgent": "true", names.HOPS_EXTENSION: "2"}
    assert (ev.datacontenttype, ev.data) == ("text/plain", b"done")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "is a JSON list: expected an object"),
        (b'{"specversion": "0.3"}', "specversion must be 1.0"),
        (b'{"specversion": "1.0", "Bad-Name": "x"}', "'Bad-Name' is no CloudEvents attribute"),
        (b'{"specversion": "1.0", "ext": {"a": 1}}', "extension 'ext' must be"),
        (b'{"specversion": "1.0", "type": ""}', "type must be a non-empty string"),
    ],
)
def test_a_reply_that_is_not_an_event_is_refused(raw: bytes, error: str) -> None:
    with pytest.raises(InvalidEventError, match=error):
        build_reply(raw, function="f", msg_id="m", hops=1)


def test_hops_are_read_from_the_extension() -> None:
    def ev(**ext: str) -> CloudEvent:
        return CloudEvent(id="1", source="s", type="t", extensions=ext)

    assert hops_of(ev()) == 0
    assert hops_of(ev(vebushops="4")) == 4
    assert hops_of(ev(vebushops="x")) == 0


def test_an_http_answer_with_ce_headers_is_a_reply() -> None:
    assert reply_of_http({"Content-Type": "application/json"}, b"{}") is None
    raw = reply_of_http(
        {"ce-type": "com.example.A.v0", "ce-subject": "a%20b", "Content-Type": "application/json"},
        b'{"x": 1}',
    )
    assert raw is not None
    reply = build_reply(raw, function="f", msg_id="m", hops=1)
    assert (reply.type, reply.subject, json.loads(reply.data)) == ("com.example.A.v0", "a b",
                                                                   {"x": 1})  # fmt: skip
    structured = reply_of_http(
        {"content-type": "application/cloudevents+json"},
        b'{"specversion": "1.0", "type": "t", "id": "1", "source": "urn:x", "data": [1]}',
    )
    assert structured is not None
    assert json.loads(structured)["data"] == [1]


def errors(
    functions: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"functions": functions, "routes": routes or []})
    return e.value.errors


def test_function_declarations_are_checked_with_their_path() -> None:
    assert errors([{"name": "f"}]) == [
        "functions[0].python: give exactly one runtime: python (a handler), command (a "
        "program run per event) or http (a function server); got none"
    ]
    assert errors([{"name": "f", "python": "a.py", "env": {"1X": "v"}}]) == [
        "functions[0].env: '1X' is not an environment variable name (letters, digits and _, "
        "not starting with a digit)"
    ]
    assert errors([{"name": "f", "command": ["x"], "env": {"A": "1"}, "secrets": {"A": "2"}}]) == [
        "functions[0].secrets: 'A' is in env too; give it once"
    ]
    assert errors([{"name": "f", "python": "a.py"}, {"name": "f", "python": "b.py"}]) == [
        "functions[1].name: 'f' is used twice"
    ]
    assert errors([{"name": "f", "http": {"command": ["x"], "path": "nope"}}]) == [
        "functions[0].http.path: expected a path starting with '/', got 'nope'"
    ]
    route = {"name": "r", "sink": {"kind": "function", "function": "g"}}
    assert errors([{"name": "f", "python": "a.py"}], [route]) == [
        "routes[0].sink.function: no function named 'g' (functions: f)"
    ]


def test_a_route_may_name_a_function_another_config_declares() -> None:
    cfg = parse_config({"routes": [{"name": "r", "sink": {"kind": "function", "function": "g"}}]})
    assert cfg.routes[0].sink_kind == names.FUNCTION_SINK


def test_secrets_of_functions_are_resolved_only_by_the_functions_service() -> None:
    raw = {"functions": [{"name": "f", "python": "a.py", "secrets": {"T": "${FN_TOKEN}"}}]}
    assert parse_config(raw, {}, service="filter").functions[0].secrets == {"T": "${FN_TOKEN}"}
    with pytest.raises(ConfigError, match="FN_TOKEN is not set"):
        parse_config(raw, {}, service="functions")
    got = parse_config(raw, {"FN_TOKEN": "s"}, service="functions").functions[0].secrets
    assert got == {"T": "s"}


def test_quantiles_come_from_the_merged_buckets() -> None:
    a, b = FunctionStats("f", "python"), FunctionStats("f", "python")
    for _ in range(90):
        a.record("done", 0.004)
    for _ in range(10):
        b.record("error", 2.0)
    buckets = [x + y for x, y in zip(a.buckets, b.buckets, strict=True)]
    p50 = merge_quantile(buckets, list(BOUNDS), 0.5)
    p99 = merge_quantile(buckets, list(BOUNDS), 0.99)
    assert p50 is not None
    assert 0.0025 < p50 <= 0.005
    assert p99 is not None
    assert 1.0 < p99 <= 2.5
    assert merge_quantile([0] * len(buckets), list(BOUNDS), 0.5) is None
    assert b.snapshot({})["errors"] == 10


def test_the_routes_status_carries_functions_and_older_answers_still_decode() -> None:
    status = ReplicaStatus(service="functions", instance="i", revision=3, functions=["a", "b"])
    assert msgspec.json.decode(msgspec.json.encode(status), type=ReplicaStatus) == status
    old = msgspec.json.decode(b'{"service": "dispatcher", "instance": "d", "revision": 1}',
                              type=ReplicaStatus)  # fmt: skip
    assert old.functions == []


def test_reply_msg_ids_are_per_function_cause_and_index() -> None:
    assert names.function_reply_msg_id("tag vm", "vc:1:42:r", 0) == "functions:tag_vm:vc:1:42:r:0"


def test_vebus_up_keeps_function_paths_next_to_the_users_file(tmp_path: Path) -> None:
    from vebus.local.supervisor import UpOptions, effective_config

    raw = {"functions": [
        {"name": "a", "python": "h.py"},
        {"name": "b", "python": "h.py", "workdir": "fns/b"},
        {"name": "c", "python": "h.py", "workdir": "/srv/c"},
    ]}  # fmt: skip
    opts = UpOptions(config_path=tmp_path / "vebus.yaml", data_dir=tmp_path / ".vebus")
    out = effective_config(raw, opts, None)["functions"]
    assert [f["workdir"] for f in out] == [str(tmp_path), str(tmp_path / "fns" / "b"), "/srv/c"]
