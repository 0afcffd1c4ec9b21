"""`vebus routes test` as a user runs it: a subprocess, a config file, an event file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"
VM_OFF = SAMPLES / "veba-VmPoweredOffEvent.json"


def vebus(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VEBUS), "routes", "test", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vebus.yaml"
    routes: list[dict[str, Any]] = [
        {
            "name": "vm-off-to-slack",
            "match": {
                "type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}],
                "data": {"UserName": [{"anything-but": ""}]},
            },
            # the sink's secret is not set: testing a pattern does not need it
            "sink": {"kind": "webhook", "url": "${SLACK_WEBHOOK_NOT_SET}"},
        },
        {
            "name": "web-vms",
            "match": {"data": {"Vm": {"Name": [{"prefix": "web-"}]}}},
            "sink": {"kind": "console"},
        },
        {"name": "everything", "sink": {"kind": "console"}},
        {"name": "broken", "match": {"type": [{"prefx": "x"}]}, "sink": {"kind": "console"}},
    ]
    path.write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    return path


def test_route_that_matches(config: Path) -> None:
    r = vebus("--route", "vm-off-to-slack", "--event", str(VM_OFF), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "matched: route vm-off-to-slack",
        '  type: matched prefix "com.vmware.vsphere.VmPoweredOff";'
        ' data.UserName: matched anything-but ""',
    ]


def test_route_that_does_not_match_names_the_field(config: Path) -> None:
    r = vebus("--route", "web-vms", "--event", str(VM_OFF), "--config", str(config))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [
        "no match: route web-vms",
        '  data.Vm.Name: "test-01" does not match prefix "web-"',
    ]


def test_route_without_match_takes_everything(config: Path) -> None:
    r = vebus("--route", "everything", "--event", str(VM_OFF), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "takes every event" in r.stdout


def test_config_from_the_environment_variable(config: Path) -> None:
    r = subprocess.run(
        [str(VEBUS), "routes", "test", "--route", "web-vms", "--event", str(VM_OFF)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"VEBUS_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1, r.stderr


def test_pattern_and_event_on_stdin() -> None:
    pattern = {
        "data": {"Host": {"Name": [{"cidr": "10.185.0.0/16"}]}, "Key": [{"numeric": [">", 9000]}]}
    }
    r = vebus("--pattern", json.dumps(pattern), "--event", "-", stdin=VM_OFF.read_text())
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "matched: pattern",
        '  data.Host.Name: matched cidr "10.185.0.0/16"; data.Key: matched numeric > 9000',
    ]


def test_attributes_and_extensions_are_matched_as_the_filter_sees_them(tmp_path: Path) -> None:
    event = {
        "specversion": "1.0",
        "id": "42",
        "source": "https://vc01.example.com/sdk",
        "type": "com.vmware.vsphere.UserLoginSessionEvent.v0",
        "subject": "UserLoginSessionEvent",
        "eventclass": "event",
        "vsphereapiversion": "8.0.2.0",
        "data": {"UserName": "root", "IpAddress": "192.168.1.20"},
    }
    path = tmp_path / "login.json"
    path.write_text(json.dumps(event))
    pattern = {
        "subject": ["UserLoginSessionEvent"],
        "eventclass": ["event"],
        "data": {"IpAddress": [{"cidr": "192.168.0.0/16"}]},
    }
    assert vebus("--pattern", json.dumps(pattern), "--event", str(path)).returncode == 0
    other = {"eventclass": ["eventex"]}
    r = vebus("--pattern", json.dumps(other), "--event", str(path))
    assert r.returncode == 1
    assert r.stdout.splitlines()[1] == '  eventclass: "event" does not match "eventex"'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--pattern", '{"type": [{"prefx": "x"}]}'],
            'vebus: --pattern: pattern.type[0]: unknown operator "prefx"',
            id="invalid-pattern",
        ),
        pytest.param(
            ["--pattern", "{not json"], "vebus: --pattern: not valid JSON", id="pattern-not-json"
        ),
        pytest.param(
            ["--pattern", '{"type": "x"}'],
            "vebus: --pattern: pattern.type: expected an array of values or a nested object",
            id="pattern-leaf-not-array",
        ),
    ],
)
def test_invalid_pattern_exits_2(args: list[str], message: str) -> None:
    r = vebus(*args, "--event", str(VM_OFF))
    assert r.returncode == 2
    assert r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_route_in_config_exits_2(config: Path) -> None:
    r = vebus("--route", "broken", "--event", str(VM_OFF), "--config", str(config))
    assert r.returncode == 2
    assert r.stderr.startswith(
        f'vebus: {config}: routes[3].match.type[0]: unknown operator "prefx"'
    )


def test_unknown_route_exits_2_and_lists_the_routes(config: Path) -> None:
    r = vebus("--route", "nope", "--event", str(VM_OFF), "--config", str(config))
    assert r.returncode == 2
    assert (
        "no route named 'nope' (routes: vm-off-to-slack, web-vms, everything, broken)" in r.stderr
    )


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param("{not json", "stdin: not valid JSON", id="not-json"),
        pytest.param(
            "[1, 2]", "stdin: expected a CloudEvent as a JSON object, got an array", id="array"
        ),
        pytest.param(
            json.dumps({"data": {"Vm": 1}}),
            "stdin: not a CloudEvent: missing required attribute(s) id, source, type, specversion",
            id="bare-data",
        ),
        pytest.param(
            json.dumps({"specversion": "0.3", "id": "1", "source": "s", "type": "t", "data": {}}),
            "stdin: specversion: only 1.0 is supported, got '0.3'",
            id="old-specversion",
        ),
        pytest.param(
            json.dumps(
                {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "x": {"a": 1}}
            ),
            "stdin: x: expected a string, an integer or a boolean, got an object",
            id="object-attribute",
        ),
        pytest.param(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "e1",
                    "source": "s",
                    "type": "t",
                    "data_base64": "bm90IGpzb24=",
                }
            ),
            "stdin: event e1: data is not valid JSON",
            id="data-not-json",
        ),
    ],
)
def test_invalid_event_exits_2(event: str, message: str) -> None:
    r = vebus("--pattern", '{"type": ["t"]}', "--event", "-", stdin=event)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_event_file_exits_2(tmp_path: Path) -> None:
    r = vebus("--pattern", '{"type": ["t"]}', "--event", str(tmp_path / "nope.json"))
    assert r.returncode == 2
    assert "cannot read the event file" in r.stderr


def test_route_and_pattern_together_is_a_usage_error(config: Path) -> None:
    r = vebus("--route", "web-vms", "--pattern", "{}", "--event", str(VM_OFF))
    assert r.returncode == 2
    assert "give exactly one of --route NAME or --pattern JSON" in r.stderr
    assert vebus("--event", str(VM_OFF)).returncode == 2
