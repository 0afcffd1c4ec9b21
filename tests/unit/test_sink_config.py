"""Sink and delivery config: each sink's struct is validated when the config loads."""

from __future__ import annotations

from typing import Any

import pytest

from vebus.config import (
    EmailSink,
    EventBridgeSink,
    HmacAuth,
    NatsSink,
    PagerDutySink,
    SyslogSink,
    VsphereSink,
    WebhookSink,
    parse_config,
)
from vebus.errors import ConfigError


def one(sink: dict[str, Any], **delivery: Any) -> Any:
    cfg = parse_config({"routes": [{"name": "r", "sink": sink, "delivery": delivery}]}, {})
    return cfg.routes[0]


def errors(sink: dict[str, Any], **delivery: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        one(sink, **delivery)
    return e.value.errors


def test_every_sink_decodes_with_its_defaults() -> None:
    hook = one({"kind": "webhook", "url": "https://fn/", "auth": {"kind": "hmac", "secret": "s"}})
    assert isinstance(hook.sink, WebhookSink)
    assert hook.sink.auth == HmacAuth(secret="s", header="X-Vebus-Signature-256")
    pd = one({"kind": "pagerduty", "routing_key": "k"}).sink
    assert isinstance(pd, PagerDutySink)
    assert (pd.action, pd.severity, pd.url) == (
        "trigger",
        "warning",
        "https://events.pagerduty.com/v2/enqueue",
    )
    mail = one({"kind": "email", "host": "smtp", "from": "a@x", "to": ["b@x"]}).sink
    assert isinstance(mail, EmailSink)
    assert (mail.from_, mail.security, mail.port) == ("a@x", "starttls", None)
    assert isinstance(one({"kind": "eventbridge"}).sink, EventBridgeSink)
    log = one({"kind": "syslog", "host": "siem"}).sink
    assert isinstance(log, SyslogSink)
    assert (log.transport, log.facility, log.severity) == ("tcp", "user", "notice")
    assert isinstance(one({"kind": "nats", "subject": "a.b"}).sink, NatsSink)
    vs = one({"kind": "vsphere", "url": "https://vc/sdk", "username": "u", "password": "p",
              "attribute": "owner"}).sink  # fmt: skip
    assert isinstance(vs, VsphereSink)
    assert (vs.ca_file, vs.insecure, vs.password_file) == (None, False, None)
    vs = one({"kind": "vsphere", "url": "https://vc/sdk", "username": "u", "attribute": "owner",
              "password_file": "/run/secrets/vc", "ca_file": "/etc/vebus/ca.pem"}).sink  # fmt: skip
    assert isinstance(vs, VsphereSink)
    assert (vs.password_file, vs.ca_file) == ("/run/secrets/vc", "/etc/vebus/ca.pem")
    r = one({"kind": "console"}, max_age="1h", rate=2.5)
    assert (r.delivery.max_age, r.delivery.rate) == (3600.0, 2.5)
    assert (one({"kind": "console"}).delivery.max_age, one({"kind": "console"}).delivery.rate) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("sink", "delivery", "line"),
    [
        ({"kind": "slack", "url": "https://hooks/x", "text": "{{ data.Vm.Name "}, {},
         "routes[0].sink.text: template syntax error on line 1: unexpected end of template, "
         "expected 'end of print statement'."),
        ({"kind": "teams", "url": "teams"}, {},
         "routes[0].sink.url: expected an http(s) URL, got 'teams'"),
        ({"kind": "webhook", "url": "http://x/", "auth": {"kind": "jwt"}}, {},
         "routes[0].sink.auth.kind: invalid value 'jwt' (expected one of: bearer, basic, hmac)"),
        ({"kind": "webhook", "url": "http://x/", "auth": {"kind": "basic", "username": "u"}}, {},
         "routes[0].sink.auth.password: required key is missing"),
        ({"kind": "pagerduty", "routing_key": "k", "severity": "high"}, {},
         "routes[0].sink.severity: expected one of critical, error, warning, info (or a "
         "template that renders one), got 'high'"),
        ({"kind": "http", "url": "ftp://{{ data.host }}/x"}, {},
         "routes[0].sink.url: expected an http(s) URL, got 'ftp://{{ data.host }}/x'"),
        ({"kind": "email", "host": "smtp", "from": "a@x", "to": []}, {},
         "routes[0].sink.to: expected at least one recipient"),
        ({"kind": "email", "host": "smtp", "from": "a@x", "to": ["b@x"], "security": "none",
          "username": "u", "password": "p"}, {},
         "routes[0].sink.security: a password would travel in clear text: use starttls or tls"),
        ({"kind": "email", "host": "smtp", "to": ["b@x"]}, {},
         "routes[0].sink.from: required key is missing"),
        ({"kind": "eventbridge", "access_key_id": "k"}, {},
         "routes[0].sink.access_key_id: access_key_id and secret_access_key go together (give "
         "both, or neither to use boto3's credential chain)"),
        ({"kind": "syslog", "host": "siem", "transport": "relp"}, {},
         "routes[0].sink.transport: Invalid enum value 'relp'"),
        ({"kind": "syslog", "host": "siem", "facility": "security"}, {},
         "routes[0].sink.facility: expected one of kern, user, mail, daemon, auth, syslog, lpr, "
         "news, uucp, cron, authpriv, ftp, ntp, audit, alert, clock, local0, local1, local2, "
         "local3, local4, local5, local6, local7, got 'security'"),
        ({"kind": "nats", "subject": "vebus.events.x"}, {},
         "routes[0].sink.subject: 'vebus.events.x' is inside vebus's own subjects (vebus.>): "
         "republishing there would loop; pick another prefix"),
        ({"kind": "nats", "subject": "a.*"}, {},
         "routes[0].sink.subject: expected a NATS subject without wildcards, got 'a.*'"),
        ({"kind": "vsphere", "url": "https://vc/sdk", "username": "u", "password": "p"}, {},
         "routes[0].sink.attribute: expected the custom attribute's name (action: attribute)"),
        ({"kind": "vsphere", "url": "https://vc/sdk", "username": "u", "password": "p",
          "attribute": "a", "insecure": True, "ca_file": "/ca.pem"}, {},
         "routes[0].sink.ca_file: insecure: true skips certificate checks, drop one of them"),
        ({"kind": "vsphere", "url": "https://vc/sdk", "username": "u", "attribute": "a"}, {},
         "routes[0].sink.password: required (or password_file)"),
        ({"kind": "console"}, {"rate": 0},
         "routes[0].delivery.rate: expected events per second, > 0 and <= 100000, got 0.0"),
        ({"kind": "console"}, {"max_age": "0s"},
         "routes[0].delivery.max_age: expected a duration > 0 (leave it out for no limit)"),
    ],
)  # fmt: skip
def test_a_wrong_sink_or_delivery_is_one_line_naming_its_path(
    sink: dict[str, Any], delivery: dict[str, Any], line: str
) -> None:
    assert errors(sink, **delivery) == [line]


def test_every_sink_kind_of_the_config_has_a_dispatcher_sink_class() -> None:
    """The dispatcher's table of sink classes covers the config's sink kinds, but `function`,
    which the functions service delivers (importing each module checks the "module:Class"
    names too)."""
    import importlib
    import typing

    from vebus import config
    from vebus_dispatcher import app, sinks

    kinds = set(typing.get_args(config.Sink)) - {config.FunctionSink}
    assert not app.owns(config.FunctionSink.__struct_config__.tag)  # type: ignore[arg-type]
    assert set(sinks._CLASSES) == kinds
    for kind, where in sinks._CLASSES.items():
        module, _, name = where.partition(":")
        cls = getattr(importlib.import_module(f"vebus_dispatcher.sinks.{module}"), name)
        assert cls.kind == kind.__struct_config__.tag
