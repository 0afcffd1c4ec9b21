"""Config decoding: defaults, durations, ${ENV} references, and errors that name the path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vebus.config import (
    ConsoleSink,
    WebhookSink,
    load_config,
    parse_config,
    parse_duration,
)
from vebus.errors import ConfigError

VEBUS = str(Path(sys.executable).parent / "vebus")


def _errors(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env or {})
    return e.value.errors


def test_the_design_sketch_decodes() -> None:
    cfg = parse_config(
        {
            "nats": {"url": "nats://127.0.0.1:4222"},
            "vcenters": [
                {
                    "name": "vc01",
                    "url": "https://vc01.example.com/sdk",
                    "username": "${VC01_USER}",
                    "password": "${VC01_PASSWORD}",
                }
            ],
            "routes": [
                {
                    "name": "vm-off-to-slack",
                    "match": {
                        "type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}],
                        "data": {"UserName": [{"anything-but": ""}]},
                    },
                    "sink": {"kind": "webhook", "url": "${SLACK_WEBHOOK}"},
                    "delivery": {
                        "max_attempts": 10,
                        "backoff": {"initial": "1s", "max": "5m", "multiplier": 2},
                        "timeout": "10s",
                    },
                }
            ],
        },
        {"VC01_USER": "admin", "VC01_PASSWORD": "s3cret", "SLACK_WEBHOOK": "https://hooks/x"},
    )
    vc = cfg.vcenters[0]
    assert (vc.username, vc.password) == ("admin", "s3cret")
    route = cfg.route("vm-off-to-slack")
    assert isinstance(route.sink, WebhookSink)
    assert route.sink.url == "https://hooks/x"
    assert route.delivery.backoff.max == 300.0
    assert route.delivery.timeout == 10.0


def test_defaults_are_sane() -> None:
    cfg = parse_config({"routes": [{"name": "all", "sink": {"kind": "console"}}]}, {})
    assert cfg.nats.url == "nats://127.0.0.1:4222"
    route = cfg.routes[0]
    assert isinstance(route.sink, ConsoleSink)
    assert route.match == {}
    assert route.delivery.max_attempts == 10
    assert cfg.streams.duplicate_window == 120.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600), ("7d", 604800), (3, 3), ("2", 2)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "-1s", True, None, -3])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_env_default_and_missing_reference() -> None:
    raw = {"nats": {"url": "${NATS_URL:-nats://nats:4222}", "password": "${NATS_PASS}"}}
    assert _errors(raw) == [
        "nats.password: environment variable NATS_PASS is not set (referenced as "
        "${NATS_PASS}; set it, or give a default: ${NATS_PASS:-value})"
    ]
    cfg = parse_config(raw, {"NATS_PASS": "p"})
    assert cfg.nats.url == "nats://nats:4222"


def test_every_problem_is_reported_with_its_path() -> None:
    errors = _errors(
        {
            "vcenters": [{"name": "vc", "url": "https://vc/sdk", "username": "u",
                          "password": "${PW}", "page_size": "ten"}],
            "routes": [
                {"name": "r1", "sink": {"kind": "webhook", "url": "http://x/"},
                 "delivery": {"max_attempts": "3", "colour": "red"}},
                {"name": "r2", "sink": {"kind": "slak"}},
                {"name": "r3", "sink": {"kind": "webhook", "url": "slack"}, "delivry": {}},
                {"name": "r1", "sink": {"kind": "console"}},
            ],
            "colour": 1,
        }
    )  # fmt: skip
    # the last line goes on with every top-level section: compare its start
    errors[-1] = errors[-1][: len("colour: unknown key 'colour' (expected one of: ")]
    assert errors == [
        "vcenters[0].password: environment variable PW is not set (referenced as ${PW}; "
        "set it, or give a default: ${PW:-value})",
        "vcenters[0].page_size: expected int, got str",
        "routes[0].delivery.colour: unknown key 'colour' (expected one of: backoff, "
        "max_age, max_attempts, max_in_flight, rate, timeout)",
        "routes[0].delivery.max_attempts: expected int, got str",
        "routes[1].sink.kind: invalid value 'slak' (expected one of: webhook, console, "
        "slack, teams, pagerduty, http, email, eventbridge, syslog, nats, vsphere, function)",
        "routes[2].delivry: unknown key 'delivry' (expected one of: delivery, match, name, sink)",
        "routes[2].sink.url: expected an http(s) URL, got 'slack'",
        "colour: unknown key 'colour' (expected one of: ",
    ]


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ([], "(top level): expected a mapping, got list"),
        ({"routes": {"a": 1}}, "routes: expected a list, got dict"),
        (
            {"vcenters": [{"name": "webhook", "url": "https://v/sdk", "username": "u",
                           "password": "p"}]},
            "vcenters[0]: vcenter name 'webhook' is reserved for another event source",
        ),
        (
            {"routes": [{"name": "a.b", "sink": {"kind": "console"}}]},
            "routes[0]: route name 'a.b' may use only letters, digits, '_' and '-' "
            "(it becomes a NATS subject token)",
        ),
        (
            {"routes": [{"name": "r", "sink": {"kind": "console"},
                         "match": {"type": [{"prefx": "x"}]}}]},
            'routes[0]: match.type[0]: unknown operator "prefx"',
        ),
        (
            {"routes": [{"name": "r", "sink": {"kind": "console"},
                         "delivery": {"max_attempts": 0}}]},
            "routes[0].delivery.max_attempts: expected >= 1, got 0",
        ),
        (
            {"routes": [{"name": "r", "sink": {"kind": "webhook"}}]},
            "routes[0].sink.url: required key is missing",
        ),
    ],
)  # fmt: skip
def test_single_problems(raw: object, line: str) -> None:
    errors = _errors(raw)
    assert len(errors) == 1
    assert errors[0].startswith(line), errors[0]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n  - name: x\n    sink: {kind: console\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+, column \d+\)"):
        load_config(bad)


def test_config_check_prints_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "vebus.yaml"
    cfg.write_text(
        "vcenters:\n"
        "  - name: vc01\n"
        "    url: https://vc01.example.com/sdk\n"
        "    username: admin\n"
        "    password: ${VEBUS_TEST_UNSET_PASSWORD}\n"
        "routes:\n"
        "  - name: r1\n"
        "    sink: {kind: webhook, url: 'http://127.0.0.1:9/'}\n"
        "    delivery: {max_attempts: many}\n"
        "    colour: red\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [VEBUS, "config", "check", str(cfg)], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"{cfg}: vcenters[0].password: environment variable VEBUS_TEST_UNSET_PASSWORD is not "
        "set (referenced as ${VEBUS_TEST_UNSET_PASSWORD}; set it, or give a default: "
        "${VEBUS_TEST_UNSET_PASSWORD:-value})",
        f"{cfg}: routes[0].colour: unknown key 'colour' (expected one of: delivery, match, "
        "name, sink)",
        f"{cfg}: routes[0].delivery.max_attempts: expected int, got str",
    ]
    assert "Traceback" not in out.stderr + out.stdout

    env["VEBUS_TEST_UNSET_PASSWORD"] = "p"
    cfg.write_text(cfg.read_text().replace("many", "3").replace("    colour: red\n", ""))
    ok = subprocess.run(
        [VEBUS, "config", "check", str(cfg)], capture_output=True, text=True, env=env, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 vCenter(s), 1 route(s))" in ok.stdout


def test_each_service_needs_only_its_own_secrets() -> None:
    raw = {
        "nats": {"password": "${NATS_PASSWORD}"},
        "vcenters": [{"name": "vc", "url": "https://vc/sdk", "username": "u",
                      "password": "${VC_PASSWORD}"}],
        "routes": [{"name": "r", "sink": {"kind": "webhook", "url": "${HOOK_URL}"}}],
    }  # fmt: skip
    env = {"NATS_PASSWORD": "n"}
    # the filter reads neither the vCenter password nor the sink's URL
    cfg = parse_config(raw, env, service="filter")
    assert cfg.nats.password == "n"
    assert cfg.vcenters[0].password == "${VC_PASSWORD}"
    with pytest.raises(ConfigError, match="HOOK_URL is not set"):
        parse_config(raw, env, service="dispatcher")
    with pytest.raises(ConfigError, match="VC_PASSWORD is not set"):
        parse_config(raw, env, service="collector")
    with pytest.raises(ConfigError, match="NATS_PASSWORD is not set"):
        parse_config(raw, {"VC_PASSWORD": "v"}, service="collector")
    sink = parse_config(raw, {**env, "HOOK_URL": "https://hook/x"}, service="dispatcher")
    assert sink.routes[0].sink.url == "https://hook/x"  # type: ignore[union-attr]
