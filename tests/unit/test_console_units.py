"""The console's pure parts: redaction, sign-in sessions, the history query, the live
budget, the event's JSON, the chart, and what `vebus up` fills in for it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from vebus.bus.cloudevent import CloudEvent
from vebus.config import ConsoleUser, parse_config
from vebus.errors import ConfigError
from vebus.local import consolesetup
from vebus.passwords import hash_secret, is_hash, verify_secret
from vebus_console.auth import Authenticator
from vebus_console.chart import MinuteCounts, render_svg
from vebus_console.eventjson import event_document, event_from_document, event_json
from vebus_console.filters import parse_filter
from vebus_console.history import parse_query
from vebus_console.live import Viewer
from vebus_console.redact import REDACTED, redact_route, restore
from vebus_console.summary import row_of

NOW = dt.datetime(2025, 1, 2, 12, 0, tzinfo=dt.UTC)
SECRETS = (
    "hooks/T000/B000/XXXXXXXX",
    "s3cr3t-bearer",
    "R0UT1NGKEY0123456789abcdef012345",
    "smtp-pass",
    "hmac-secret",
    "AKIAEXAMPLE",
    "aws-secret",
    "pw-in-url",
    "q-token",
)


def _routes() -> list[dict[str, object]]:
    return [
        {"name": "slack", "sink": {"kind": "slack", "url": "https://hooks.slack.com/services/hooks/T000/B000/XXXXXXXX"}},
        {"name": "hook", "match": {"type": ["x"]}, "sink": {
            "kind": "webhook", "url": "https://bob:pw-in-url@fn.example/run?token=q-token",
            "headers": {"Authorization": "Bearer s3cr3t-bearer", "X-Env": "${FN_TOKEN}"},
            "auth": {"kind": "hmac", "secret": "hmac-secret"}}},
        {"name": "pd", "sink": {"kind": "pagerduty",
                                "routing_key": "R0UT1NGKEY0123456789abcdef012345"}},
        {"name": "mail", "sink": {"kind": "email", "host": "smtp", "from": "a@b", "to": ["c@d"],
                                  "username": "u", "password": "smtp-pass"}},
        {"name": "eb", "sink": {"kind": "eventbridge", "access_key_id": "AKIAEXAMPLE",
                                "secret_access_key": "aws-secret", "region": "eu-west-1"}},
        {"name": "ref", "sink": {"kind": "slack", "url": "${SLACK_URL}"}},
    ]  # fmt: skip


def test_no_secret_survives_redaction_and_references_stay() -> None:
    shown = json.dumps([redact_route(r) for r in _routes()])
    for secret in SECRETS:
        assert secret not in shown, secret
    assert "${FN_TOKEN}" in shown
    assert "${SLACK_URL}" in shown
    assert "https://hooks.slack.com/<redacted>" in shown
    assert "fn.example/run" in shown  # the host and path of an ordinary webhook stay


def test_restore_puts_stored_secrets_back_and_refuses_orphans() -> None:
    stored = _routes()
    edited = [redact_route(r) for r in stored]
    edited[1]["match"] = {"type": ["y"]}
    back, problems = restore(edited, stored)
    assert problems == []
    assert back[1]["match"] == {"type": ["y"]}
    assert back[1]["sink"] == stored[1]["sink"]
    assert back[0]["sink"] == stored[0]["sink"]
    new = {"name": "new", "sink": {"kind": "slack", "url": REDACTED}}
    _, problems = restore([*edited, new], stored)
    assert len(problems) == 1
    assert "routes[6].sink.url" in problems[0]


def test_passwords_hash_and_verify() -> None:
    h = hash_secret("correct horse")
    assert is_hash(h)
    assert "correct" not in h
    assert verify_secret("correct horse", h)
    assert not verify_secret("wrong", h)
    assert not verify_secret("correct horse", "plaintext")


def test_console_users_take_hashes_only() -> None:
    with pytest.raises(ConfigError, match="password_hash: expected a hash"):
        parse_config({"console": {"users": [{"name": "a", "password_hash": "hunter2"}]}})
    with pytest.raises(ConfigError, match="give password_hash, token_hash, or both"):
        parse_config({"console": {"users": [{"name": "a"}]}})
    cfg = parse_config({"console": {"users": [{"name": "a", "token_hash": hash_secret("t")}]}})
    assert cfg.console.users[0].role == "viewer"
    assert cfg.console.listen == "127.0.0.1:8090"


async def test_sessions_are_signed_expire_and_follow_the_config() -> None:
    users = [
        ConsoleUser(name="op", role="operator", password_hash=hash_secret("pw")),
        ConsoleUser(name="view", token_hash=hash_secret("tok")),
    ]
    auth = Authenticator(users, session_key="k" * 40, max_age=60)
    who = await auth.password("op", "pw")
    assert who is not None
    assert who.operator
    assert await auth.password("op", "nope") is None
    assert await auth.password("nobody", "pw") is None
    cookie = auth.issue(who)
    back = auth.session(cookie)
    assert back is not None
    assert back.name == "op"
    assert back.csrf
    _body, sig = cookie.split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps({"u": "op", "e": time.time() + 999, "n": "x"}).encode())
        .decode()
        .rstrip("=")
    )
    assert auth.session(f"{forged}.{sig}") is None
    assert Authenticator(users, session_key="z" * 40, max_age=60).session(cookie) is None
    expired = Authenticator(users, session_key="k" * 40, max_age=-1)
    assert expired.session(expired.issue(who)) is None
    viewer = await auth.token("tok")
    assert viewer is not None
    assert not viewer.operator
    assert await auth.token("tok") == viewer  # from the cache
    assert await auth.token("other") is None
    # a user removed from the config: their cookie no longer signs anyone in
    assert Authenticator(users[1:], session_key="k" * 40, max_age=60).session(cookie) is None


def test_history_query_subjects() -> None:
    q = parse_query({"from": "2h", "vcenter": "vc01", "type": "VmPoweredOffEvent"}, now=NOW)
    assert q.start == NOW - dt.timedelta(hours=2)
    assert q.end == NOW
    assert q.subject() == "vebus.events.vc01.VmPoweredOffEvent"
    full = parse_query({"type": "com.vmware.vsphere.VmPoweredOffEvent.v0"}, now=NOW)
    assert full.subject() == "vebus.events.*.VmPoweredOffEvent"
    assert parse_query({"vcenter": "vc01"}, now=NOW).subject() == "vebus.events.vc01.>"
    assert parse_query({}, now=NOW).subject() == "vebus.events.>"
    ex = parse_query({"type": "esx.problem.net.down"}, now=NOW)
    assert ex.subject() == "vebus.events.*.esx_problem_net_down"
    with pytest.raises(ValueError, match="from"):
        parse_query({"from": "yesterday"}, now=NOW)
    with pytest.raises(ValueError, match="limit"):
        parse_query({"limit": "100000"}, now=NOW)


def _event(**data: object) -> CloudEvent:
    return CloudEvent(
        id="7",
        source="https://vc01/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        subject="VmPoweredOffEvent",
        time="2025-01-02T12:00:00Z",
        extensions={"eventclass": "event"},
        data=json.dumps(data).encode(),
    )


def test_filter_words_and_patterns() -> None:
    ev = _event(UserName="VSPHERE.LOCAL\\bob", Vm={"Name": "web-01"}, Key=7)
    row = row_of("vebus.events.vc01.VmPoweredOffEvent", ev)
    assert (row.vcenter, row.kind, row.object, row.user) == (
        "vc01", "VmPoweredOffEvent", "web-01", "VSPHERE.LOCAL\\bob",
    )  # fmt: skip
    assert parse_filter("web-01 poweredoff").matches(ev, row)
    assert parse_filter("BOB vc01").matches(ev, row)
    assert not parse_filter("db-01").matches(ev, row)
    assert parse_filter('{"data": {"Vm": {"Name": [{"prefix": "web"}]}}}').matches(ev, row)
    assert not parse_filter('{"data": {"Key": [{"numeric": [">", 9]}]}}').matches(ev, row)
    with pytest.raises(ValueError, match="pattern"):
        parse_filter('{"type": [{"prefx": "x"}]}')


def test_event_json_reads_back_as_the_same_event() -> None:
    # (`vebus routes test` reading it is tested with the command itself:
    # tests/e2e/test_console_browser.py)
    ev = _event(UserName="bob", Vm={"Name": "web-01"})
    back = event_from_document(event_json(ev))
    assert back.attributes() == ev.attributes()
    assert back.as_match_input() == ev.as_match_input()
    binary = CloudEvent(id="1", source="s", type="t", datacontenttype="application/octet-stream",
                        data=b"\xff\x00")  # fmt: skip
    assert "data_base64" in event_document(binary)
    assert event_from_document(event_json(binary)) == binary


def test_live_budget_samples_past_the_rate() -> None:
    viewer = Viewer(filter=parse_filter(""), rate=50)
    now = time.monotonic()
    taken = sum(viewer.take(now) for _ in range(1000))
    assert taken == 50  # a burst: one second's budget, the rest is skipped
    assert sum(viewer.take(now + 0.5) for _ in range(1000)) == 25


def test_chart_draws_every_minute_and_a_legend() -> None:
    counts = MinuteCounts(end=NOW)
    for minute in range(60):
        counts.per_minute[minute] = Counter({"VmPoweredOffEvent": minute, "<script>": 1})
    svg = str(render_svg(counts))
    assert svg.startswith("<svg")
    assert svg.count("<rect") > 60
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "VmPoweredOffEvent" in svg
    assert "11:00" in svg


def test_vebus_up_fills_in_a_sign_in_and_the_dlq_token(tmp_path: Path) -> None:
    setup = consolesetup.prepare({"routes": []}, tmp_path)
    env_file = tmp_path / consolesetup.CONSOLE_ENV
    assert setup.token_file == env_file
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    token = next(
        line.split("=", 1)[1]
        for line in env_file.read_text().splitlines()
        if line.startswith("VEBUS_CONSOLE_TOKEN=")
    )
    user = setup.config["console"]["users"][0]
    assert user["role"] == "operator"
    assert verify_secret(token, user["token_hash"])
    assert token not in json.dumps(setup.config)
    assert setup.config["deadletter"]["api"]["token"] == "${VEBUS_DLQ_TOKEN}"
    assert setup.env["VEBUS_DLQ_TOKEN"]
    assert setup.env["VEBUS_DLQ_TOKEN"] not in str(setup.config)
    again = consolesetup.prepare({}, tmp_path)
    assert again.env == setup.env  # kept across restarts
    own = consolesetup.prepare(
        {"console": {"users": [{"name": "me", "token_hash": "x"}]},
         "deadletter": {"api": {"token": "${MINE}"}}}, tmp_path)  # fmt: skip
    assert own.token_file is None
    assert own.env == {}
    assert own.config["console"]["users"][0]["name"] == "me"
    parse_config(setup.config, {"VEBUS_DLQ_TOKEN": "x" * 20})


async def test_live_hub_filters_samples_and_primes_new_pages() -> None:
    from nats.aio.msg import Msg

    from vebus.bus.cloudevent import to_headers
    from vebus_console.live import LiveHub

    hub = LiveHub(nc=None)  # type: ignore[arg-type]  # no subscription: messages fed below
    everything = hub.add(parse_filter(""), rate=50)
    web = hub.add(parse_filter("web-01"), rate=50)
    for i in range(200):
        ev = _event(Vm={"Name": "web-01" if i % 2 else "db-01"}, Key=i)
        msg = Msg(_client=None, subject="vebus.events.vc01.VmPoweredOffEvent",  # type: ignore[arg-type]
                  data=ev.data, headers=to_headers(ev))  # fmt: skip
        await hub._on_msg(msg)
    assert (everything.matched, everything.sent, everything.skipped) == (200, 50, 150)
    assert (web.matched, web.sent, web.skipped) == (100, 50, 50)
    frame = everything.queue.get_nowait()
    assert frame is not None
    assert frame.startswith(b"event: ev\ndata: ")
    doc = json.loads(frame.split(b"data: ", 1)[1])
    assert doc["row"]["object"] == "db-01"
    assert doc["event"]["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    # a page that opens now gets the recent events its filter takes, newest last
    late = hub.add(parse_filter("db-01"), rate=50, backlog=10)
    assert late.queue.qsize() == 10
