"""Scheduled checks: their config (defaults, errors that name the path), numbers from
`${ENV}`, the events they publish (pure), and every recipe passing `vebus config check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vebus.config import (
    DatastoreUsageCheck,
    EmailSink,
    SnapshotAgeCheck,
    VmPoweredOffCheck,
    parse_config,
)
from vebus.errors import ConfigError
from vebus_collector.checks import Condition, checks_for, event_type, to_message
from vebus_collector.probes import Finding, MoRef, in_scope

VEBUS = str(Path(sys.executable).parent / "vebus")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VC = {"name": "vc1", "url": "https://vc1.example.com/sdk", "username": "u", "password": "p"}


def _errors(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env or {})
    return e.value.errors


def test_checks_decode_with_their_defaults() -> None:
    cfg = parse_config(
        {
            "vcenters": [VC, {**VC, "name": "vc2"}],
            "checks": [
                {"kind": "snapshot_age", "name": "snaps", "threshold": "2d"},
                {"kind": "datastore_usage", "name": "ds", "scope": {"vcenters": ["vc2"]}},
                {"kind": "vm_powered_off", "name": "off", "scope": {"names": ["prod-*"]}},
            ],
        },
        {},
    )
    snaps, ds, off = cfg.checks
    assert isinstance(snaps, SnapshotAgeCheck)
    assert snaps.threshold == 2 * 86400
    assert snaps.interval == 3600
    assert isinstance(ds, DatastoreUsageCheck)
    assert (ds.threshold, ds.interval) == (85, 300)
    assert isinstance(off, VmPoweredOffCheck)
    assert off.threshold == 30 * 86400
    assert [c.name for c in checks_for(cfg, "vc1")] == ["snaps", "off"]
    assert [c.name for c in checks_for(cfg, "vc2")] == ["snaps", "ds", "off"]


def test_check_errors_name_the_path() -> None:
    errors = _errors(
        {
            "vcenters": [VC],
            "checks": [
                {"kind": "snapshot_age", "name": "a", "threshold": "old"},
                {"kind": "datastore_usage", "name": "b", "threshold": 120},
                {"kind": "datastore_usage", "name": "c", "threshold": 80, "clear_below": 90},
                {"kind": "vm_powered_off", "name": "d", "interval": "100ms"},
                {"kind": "vm_powerd_off", "name": "e"},
                {"name": "f"},
                {"kind": "snapshot_age", "name": "g", "treshold": "1d"},
                {"kind": "snapshot_age", "name": "h", "scope": {"vcenters": ["vc9"]}},
                {"kind": "snapshot_age", "name": "h"},
                {"kind": "snapshot_age", "name": "has space"},
            ],
        }
    )
    assert errors == [
        "checks[0].threshold: expected a duration like 10s or 5m, got 'old'",
        "checks[1].threshold: expected a percentage, 0 to 100, got 120.0",
        "checks[2].clear_below: expected a percentage from 0 up to threshold (80), got 90.0",
        "checks[3].interval: expected a duration of at least 1s, got 0.1s",
        "checks[4].kind: invalid value 'vm_powerd_off' (expected one of: snapshot_age, "
        "datastore_usage, vm_powered_off)",
        "checks[5].kind: required key is missing",
        "checks[6].treshold: unknown key 'treshold' (expected one of: interval, name, scope, "
        "threshold)",
        "checks[9].name: check name 'has space' may use only letters, digits, '_' and '-' "
        "(it becomes a NATS subject token)",
        "checks[8].name: 'h' is used twice",
        "checks[7].scope.vcenters[0]: no vCenter named 'vc9' (expected one of: vc1)",
    ]


def test_a_whole_env_reference_becomes_the_number_its_field_takes() -> None:
    sink = {"kind": "email", "host": "h", "from": "a@example.com", "to": ["b@example.com"],
            "port": "${SMTP_PORT:-587}", "security": "${SMTP_SECURITY}"}  # fmt: skip
    raw = {
        "vcenters": [VC],
        "routes": [{"name": "r", "sink": sink}],
        "checks": [{"kind": "datastore_usage", "name": "ds", "threshold": "${DS_MAX}",
                    "interval": "${DS_EVERY:-90}"}],
    }  # fmt: skip
    cfg = parse_config(raw, {"SMTP_PORT": "2525", "SMTP_SECURITY": "none", "DS_MAX": "92.5"})
    email = cfg.routes[0].sink
    assert isinstance(email, EmailSink)
    assert (email.port, email.security) == (2525, "none")
    assert (cfg.checks[0].threshold, cfg.checks[0].interval) == (92.5, 90)
    # text written in the file stays text; an env value that is no number is still an error
    written = {**sink, "port": "2525", "security": "none"}
    assert _errors({"routes": [{"name": "r", "sink": written}]}) == [
        "routes[0].sink.port: expected int | null, got str"
    ]
    assert _errors(raw, {"SMTP_PORT": "smtp", "SMTP_SECURITY": "none", "DS_MAX": "1"}) == [
        "routes[0].sink.port: expected int | null, got str"
    ]


def test_an_unset_number_of_another_service_does_not_stop_this_one() -> None:
    sink = {"kind": "email", "host": "h", "from": "a@example.com", "to": ["b@example.com"],
            "port": "${SMTP_PORT}", "security": "none"}  # fmt: skip
    raw = {
        "routes": [{"name": "r", "sink": sink}],
        "checks": [{"kind": "snapshot_age", "name": "s", "threshold": "${MAX_AGE}"}],
    }
    cfg = parse_config(raw, {}, service="filter")  # neither section is the filter's
    assert isinstance(cfg.routes[0].sink, EmailSink)
    assert cfg.routes[0].sink.port is None
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {}, service="collector")
    assert e.value.errors == [
        "checks[0].threshold: environment variable MAX_AGE is not set (referenced as "
        "${MAX_AGE}; set it, or give a default: ${MAX_AGE:-value})"
    ]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {}, service="dispatcher")
    assert [line.split(":")[0] for line in e.value.errors] == ["routes[0].sink.port"]


def test_scope_patterns() -> None:
    scope = SnapshotAgeCheck(name="x").scope
    assert in_scope(scope, "anything")
    scope = parse_config({"checks": [{"kind": "snapshot_age", "name": "x",
                          "scope": {"names": ["prod-*", "db?"], "exclude": ["*-tmpl"]}}]},
                         {}).checks[0].scope  # fmt: skip
    assert in_scope(scope, "prod-web")
    assert in_scope(scope, "db1")
    assert not in_scope(scope, "prod-tmpl")
    assert not in_scope(scope, "test-web")
    assert not in_scope(scope, "Prod-web")  # case-sensitive, as vSphere names are


def test_the_event_of_a_condition_and_of_its_end() -> None:
    cfg = parse_config({"vcenters": [VC], "checks": [{"kind": "datastore_usage", "name": "ds",
                        "threshold": 80}]}, {})  # fmt: skip
    check, vc = cfg.checks[0], cfg.vcenters[0]
    finding = Finding(key="datastore-1", object=MoRef("Datastore", "datastore-1"),
                      name="ds1", value=91.5, data={"Ds": {"Name": "ds1"}})  # fmt: skip
    cond = Condition(finding=finding, since="2026-01-01T00:00:00Z",
                     observed="2026-01-01T00:00:00Z")  # fmt: skip
    msg = to_message(check, vc, "datastore-1", cond, cleared=False)
    assert msg.subject == "vebus.events.checks.ds"
    assert (
        msg.headers["ce-type"] == event_type(check) == "com.vebus.check.DatastoreUsageExceeded.v0"
    )
    assert msg.headers["ce-id"] == "ds:vc1:datastore-1:2026-01-01T00:00:00Z"
    assert msg.headers["Nats-Msg-Id"] == "check:" + msg.headers["ce-id"]
    assert msg.headers["ce-source"] == vc.url
    data = json.loads(msg.body)
    assert data["Object"] == {"Type": "Datastore", "Value": "datastore-1"}
    assert (data["Value"], data["Threshold"], data["Unit"]) == (91.5, 80.0, "percent")
    assert data["FullFormattedMessage"] == "Datastore ds1 is 91.5% full (threshold 80%)"
    # the same condition always gives the same message: a re-publish is a duplicate
    assert to_message(check, vc, "datastore-1", cond, cleared=False).body == msg.body
    done = Condition(finding=finding, since=cond.since, observed=cond.observed, raised=True,
                     cleared="2026-01-02T00:00:00Z")  # fmt: skip
    end = to_message(check, vc, "datastore-1", done, cleared=True)
    assert end.headers["ce-type"] == "com.vebus.check.DatastoreUsageExceededCleared.v0"
    assert end.headers["Nats-Msg-Id"] == msg.headers["Nats-Msg-Id"] + ":cleared"
    assert json.loads(end.body)["ClearedTime"] == "2026-01-02T00:00:00Z"


RECIPES = sorted(EXAMPLES.glob("*/vebus.yaml"))


def test_there_are_recipes() -> None:
    assert len(RECIPES) >= 7


@pytest.mark.parametrize("path", RECIPES, ids=[p.parent.name for p in RECIPES])
def test_every_recipe_passes_config_check_as_shipped(path: Path) -> None:
    # no variable set: the placeholders' defaults must make a valid file
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    out = subprocess.run(
        [VEBUS, "config", "check", str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{path}: ok")
