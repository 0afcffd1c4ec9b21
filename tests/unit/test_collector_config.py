"""The collector's parts of vebus.yaml: `vcenters:` and `webhook:`."""

from __future__ import annotations

from typing import Any

import pytest

from vebus.config import parse_config
from vebus.errors import ConfigError


def _vc(**extra: Any) -> dict[str, Any]:
    return {"name": "vc1", "url": "https://vc/sdk", "username": "u", "password": "p", **extra}


def _errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={})
    return e.value.errors


def test_defaults_verify_tls_and_enrich_nothing() -> None:
    vc = parse_config({"vcenters": [_vc()]}, env={}).vcenters[0]
    assert not vc.insecure
    assert vc.ca_file is None
    assert not vc.enrich
    assert vc.stall_after == 60
    assert vc.catchup_max_age == 0
    assert parse_config({}, env={}).webhook is None


def test_vcenter_limits_and_secrets() -> None:
    vc = parse_config(
        {"vcenters": [_vc(password="", password_file="/run/secrets/vc", catchup_max_age="1h",
                          catchup_max_events=5000, stall_after="2m", enrich=True)]},
        env={},
    ).vcenters[0]  # fmt: skip
    assert (vc.catchup_max_age, vc.catchup_max_events, vc.stall_after) == (3600, 5000, 120)
    assert vc.password_file == "/run/secrets/vc"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"insecure": True, "ca_file": "/ca.pem"}, "vcenters[0].ca_file: insecure: true skips"),
        ({"password": ""}, "vcenters[0].password: required (or password_file)"),
        ({"password_file": "/x"}, "give either password or password_file"),
        ({"catchup_max_events": -1}, "catchup_max_events: expected >= 0"),
        ({"stall_after": 0}, "stall_after: expected a duration > 0"),
    ],
)
def test_vcenter_errors_name_the_field(extra: dict[str, Any], message: str) -> None:
    assert any(message in line for line in _errors({"vcenters": [_vc(**extra)]}))


def test_webhook_source() -> None:
    cfg = parse_config(
        {"webhook": {"listen": "0.0.0.0:9000", "bearer_token": "${TOKEN}"}}, env={"TOKEN": "s"}
    ).webhook
    assert cfg is not None
    assert (cfg.listen, cfg.path, cfg.bearer_token) == ("0.0.0.0:9000", "/webhook", "s")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "webhook.bearer_token: give bearer_token, username/password and/or hmac"),
        ({"anonymous": True, "listen": "nope"}, "webhook.listen: expected host:port"),
        ({"username": "u"}, "webhook.username: basic auth needs both"),
        ({"anonymous": True, "path": "x"}, "webhook.path: expected a path"),
        ({"anonymous": True, "tokens": []}, "webhook.tokens: unknown key"),
    ],
)
def test_webhook_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    assert any(message in line for line in _errors({"webhook": raw})), _errors({"webhook": raw})
