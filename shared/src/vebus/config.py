"""Typed vebus configuration: one YAML file decoded into frozen msgspec structs.

Strings may hold `${NAME}` (or `${NAME:-default}`) references to environment variables;
they are resolved by the process that loads the file, never written back or logged.
Every problem is reported as one line that names its path (`routes[2].sink.url`) and
what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from vebus.bus.streams import StreamSettings
from vebus.errors import ConfigError
from vebus.names import (
    CONSOLE_PORT,
    DEADLETTER_API_PORT,
    FUNCTION_SINK,
    H_SIGNATURE,
    NATS_PORT,
    RESERVED_SOURCES,
    token,
)
from vebus.passwords import is_hash

__all__ = [
    "SERVICE_SECRETS",
    "Backoff",
    "BasicAuth",
    "BearerAuth",
    "Check",
    "CheckScope",
    "Config",
    "ConsoleConfig",
    "ConsoleSink",
    "ConsoleTls",
    "ConsoleUser",
    "DatastoreUsageCheck",
    "DeadletterAlertConfig",
    "DeadletterApiConfig",
    "DeadletterConfig",
    "Delivery",
    "Duration",
    "EmailSink",
    "EventBridgeSink",
    "FunctionConfig",
    "FunctionSink",
    "FunctionVCenterAccount",
    "HmacAuth",
    "HttpAuth",
    "HttpFunction",
    "HttpSink",
    "NatsConfig",
    "NatsSink",
    "NatsTls",
    "PagerDutySink",
    "Route",
    "Sink",
    "SlackSink",
    "SnapshotAgeCheck",
    "StreamsConfig",
    "SyslogSink",
    "TeamsSink",
    "VCenterConfig",
    "VCenterEndpoint",
    "VmPoweredOffCheck",
    "VsphereSink",
    "WebhookHmac",
    "WebhookRateLimit",
    "WebhookSink",
    "WebhookSourceConfig",
    "env_references",
    "is_unresolved",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_yaml",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class Duration(float):
    """Seconds, written in the file as a number or `500ms`, `10s`, `5m`, `1h`, `7d`."""


def parse_duration(value: object) -> Duration:
    """A Duration from a number of seconds or a string such as `1h`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s or 5m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a duration >= 0, got {value!r}")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"expected a duration like 10s or 5m, got {value!r}")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"unsupported type {typ!r}")


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r} may use only letters, digits, '_' and '-' "
            f"(it becomes a NATS subject token)"
        )


def _check_http_url(field: str, url: str) -> None:
    if is_unresolved(url):
        return  # checked by the process that has the variable
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field}: expected an http(s) URL, got {url!r}")


class NatsTls(_Base, frozen=True):
    """TLS to NATS: the CA that signed the servers' certificates, and for mutual TLS the
    client's own certificate and key (PEM files)."""

    #: the CA certificate(s) to trust (default: the system's CAs)
    ca_file: str | None = None
    #: this client's certificate and private key, when the server verifies clients
    cert_file: str | None = None
    key_file: str | None = None
    #: the name the servers' certificates must carry (default: each URL's host)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both (mutual TLS) or neither")


class NatsConfig(_Base, frozen=True):
    """How to reach NATS."""

    #: one URL, or several comma-separated (`nats://a:4222,nats://b:4222`)
    url: str = f"nats://127.0.0.1:{NATS_PORT}"
    user: str | None = None
    password: str | None = None
    #: a NATS credentials file (NKEY seed and user JWT: decentralised auth), instead of
    #: user and password
    creds: str | None = None
    #: TLS to the servers (also when a URL says `tls://`)
    tls: NatsTls | None = None
    #: JetStream stream replicas (1 embedded, 3 on a cluster)
    replicas: int = 1
    connect_timeout: Duration = Duration(5)

    def __post_init__(self) -> None:
        if self.creds is not None and (self.user or self.password):
            raise ValueError("creds: give a credentials file or user and password, not both")

    def servers(self) -> list[str]:
        """The server URLs: `url` may list several, comma-separated (a cluster's nodes)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


class StreamsConfig(_Base, frozen=True):
    """Retention of the three streams."""

    events_max_age: Duration = Duration(7 * 86400)
    events_max_bytes: int = -1
    #: per route: a backed-up route cannot fill VEBUS_ROUTES for the others
    route_max_msgs: int = 1_000_000
    dlq_max_age: Duration = Duration(30 * 86400)
    duplicate_window: Duration = Duration(120)


class VCenterEndpoint(_Base, frozen=True):
    """How to reach and log in to one vCenter: the fields every vCenter-facing block shares
    (`vcenters[]`, the `vsphere` sink), read by vebus.vsphere's session helper."""

    url: str
    username: str
    #: the password itself (usually `${ENV}`), or
    password: str = ""
    #: a file holding it (a mounted secret), read at each login so a rotated one is used
    password_file: str | None = None
    #: PEM file of the CA (or self-signed certificate) that vCenter's certificate chains to;
    #: trusted instead of the system's CAs
    ca_file: str | None = None
    #: skip TLS certificate verification (lab vCenters with self-signed certificates; warns)
    insecure: bool = False

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)
        if self.password and self.password_file:
            raise ValueError("password_file: give either password or password_file, not both")
        if not self.password and not self.password_file:
            raise ValueError("password: required (or password_file)")
        if self.insecure and self.ca_file:
            raise ValueError("ca_file: insecure: true skips certificate checks, drop one of them")


class VCenterConfig(VCenterEndpoint, frozen=True, kw_only=True):
    """One vCenter Server (or simulator) to follow."""

    #: the event source's name: the subject token `vebus.events.<name>.>`
    name: str
    #: events per EventHistoryCollector page while tailing
    page_size: int = 10
    #: where a collector with no checkpoint starts: new events only, or all history vCenter has
    start: Literal["latest", "earliest"] = "latest"
    #: how often the checkpoint is written (it is also written on shutdown)
    checkpoint_interval: Duration = Duration(1)
    #: a catch-up reads no further back than this (0: as far as vCenter's history goes)
    catchup_max_age: Duration = Duration(0)
    #: a catch-up publishes at most this many events, the newest (0: no limit)
    catchup_max_events: int = 0
    #: vCenter has newer events than the last published for this long: reported as stalled
    stall_after: Duration = Duration(60)
    #: add the affected object's moref and a VM's instance and BIOS UUID as extensions
    enrich: bool = False

    def __post_init__(self) -> None:
        _check_name("vcenter", self.name)
        if self.name in RESERVED_SOURCES:
            raise ValueError(f"vcenter name {self.name!r} is reserved for another event source")
        super().__post_init__()
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"page_size: expected 1 to 1000, got {self.page_size}")
        if self.catchup_max_events < 0:
            raise ValueError(f"catchup_max_events: expected >= 0, got {self.catchup_max_events}")
        if self.stall_after <= 0:
            raise ValueError("stall_after: expected a duration > 0")


class WebhookHmac(_Base, frozen=True):
    """Requests signed as a webhook sink with `auth: {kind: hmac, timestamp: true}` signs."""

    secret: str
    header: str = H_SIGNATURE
    #: how far the signed time may be from now: a captured request is refused after it
    #: (and one replayed within it stores nothing new: JetStream drops the same event id
    #: within `streams.duplicate_window`, 2 minutes by default)
    tolerance: Duration = Duration(120)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("secret: expected a non-empty secret")
        if float(self.tolerance) <= 0:
            raise ValueError(f"tolerance: expected a duration > 0, got {float(self.tolerance):g}")


class WebhookRateLimit(_Base, frozen=True):
    """At most `requests` per `per` from one client address (a moving window)."""

    requests: int
    per: Duration = Duration(1)

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests: expected >= 1, got {self.requests}")
        seconds = float(self.per)
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"per: expected a whole number of seconds >= 1s, got {seconds:g}")


class WebhookSourceConfig(_Base, frozen=True):
    """The collector's HTTP endpoint for CloudEvents from other systems."""

    #: host:port to listen on
    listen: str = "127.0.0.1:8280"
    path: str = "/webhook"
    #: `Authorization: Bearer <token>` accepted when set
    bearer_token: str | None = None
    #: `Authorization: Basic` with these accepted when set
    username: str | None = None
    password: str | None = None
    #: an HMAC-SHA256 signature of the body with a timestamp required (vebus.bus.signing)
    hmac: WebhookHmac | None = None
    #: no authentication at all (say so explicitly)
    anonymous: bool = False
    #: largest request body in bytes; 0: the NATS server's max_payload minus vebus's margin
    max_body: int = 0
    #: requests each client address may send; more are answered 429 and not stored
    rate_limit: WebhookRateLimit | None = None

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen: expected host:port, got {self.listen!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path: expected a path starting with '/', got {self.path!r}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username: basic auth needs both username and password")
        authenticated = (
            self.bearer_token is not None or self.username is not None or self.hmac is not None
        )
        if not authenticated and not self.anonymous:
            raise ValueError(
                "bearer_token: give bearer_token, username/password and/or hmac, "
                "or anonymous: true to accept unauthenticated requests"
            )
        if self.max_body < 0:
            raise ValueError(f"max_body: expected >= 0, got {self.max_body}")


class Backoff(_Base, frozen=True):
    """Exponential backoff between delivery attempts, with jitter."""

    initial: Duration = Duration(1)
    max: Duration = Duration(300)
    multiplier: float = 2.0
    #: each delay is drawn from [d * (1 - jitter), d]
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier: expected >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter: expected 0 to 1, got {self.jitter}")


class Delivery(_Base, frozen=True):
    """How hard the dispatcher tries before an event becomes a dead letter."""

    max_attempts: int = 10
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    #: per attempt
    timeout: Duration = Duration(10)
    #: events of this route being delivered at once, per dispatcher replica
    max_in_flight: int = 16
    #: give up (dead letter, exhausted max_age) on an event that entered the route longer
    #: ago than this, not counting time the route spent paused; None: no age limit
    max_age: Duration | None = None
    #: events per second for the route as a whole, however many dispatcher replicas run;
    #: None: as fast as the sink takes them
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected >= 1, got {self.max_attempts}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected >= 1, got {self.max_in_flight}")
        if self.timeout <= 0:
            raise ValueError("timeout: expected a duration > 0")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError("max_age: expected a duration > 0 (leave it out for no limit)")
        if self.rate is not None and not 0 < self.rate <= 100_000:
            raise ValueError(
                f"rate: expected events per second, > 0 and <= 100000, got {self.rate}"
            )


def _check_template(field: str, source: str | None) -> None:
    """Compile a sink text field now, so a broken template fails when the config loads."""
    if source is None:
        return
    from vebus.errors import TemplateError
    from vebus.events.templates import compile_template

    try:
        compile_template(source, path=field)
    except TemplateError as e:
        raise ValueError(str(e)) from None


def _is_template(source: str) -> bool:
    return "{{" in source or "{%" in source


class BearerAuth(_Base, frozen=True, tag_field="kind", tag="bearer"):
    """`Authorization: Bearer <token>` on every request."""

    token: str


class BasicAuth(_Base, frozen=True, tag_field="kind", tag="basic"):
    """HTTP basic authentication on every request."""

    username: str
    password: str


class HmacAuth(_Base, frozen=True, tag_field="kind", tag="hmac"):
    """An HMAC-SHA256 of the request body, `sha256=<hex>`, in `header` (GitHub style); with
    `timestamp`, of `<unix time>.<body>` and the time in X-Vebus-Timestamp, which a vebus
    webhook source with `hmac` requires (vebus.bus.signing)."""

    secret: str
    header: str = H_SIGNATURE
    timestamp: bool = False

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("secret: expected a non-empty secret")


HttpAuth = BearerAuth | BasicAuth | HmacAuth


class WebhookSink(_Base, frozen=True, tag_field="kind", tag="webhook"):
    """CloudEvents over HTTP POST (a VEBA function, a Knative service, any webhook)."""

    url: str
    #: binary: attributes in ce- headers; structured: the whole event as JSON
    mode: Literal["binary", "structured"] = "binary"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    auth: HttpAuth | None = None

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)


class ConsoleSink(_Base, frozen=True, tag_field="kind", tag="console"):
    """One line per event on the dispatcher's standard output (at-most-once)."""

    format: Literal["line", "json"] = "line"


#: the text chat and paging sinks send when the route gives none
DEFAULT_TEXT = "{{ data.FullFormattedMessage | default(type, true) }}"


class SlackSink(_Base, frozen=True, tag_field="kind", tag="slack"):
    """A Slack incoming-webhook message whose text is the route's template."""

    url: str
    text: str = DEFAULT_TEXT

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)
        _check_template("text", self.text)


class TeamsSink(_Base, frozen=True, tag_field="kind", tag="teams"):
    """A Microsoft Teams incoming-webhook (Workflows) message: an Adaptive Card."""

    url: str
    text: str = DEFAULT_TEXT
    title: str | None = None

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)
        _check_template("text", self.text)
        _check_template("title", self.title)


PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")


class PagerDutySink(_Base, frozen=True, tag_field="kind", tag="pagerduty"):
    """A PagerDuty Events API v2 event: trigger, acknowledge or resolve an alert."""

    routing_key: str
    action: Literal["trigger", "acknowledge", "resolve"] = "trigger"
    #: the alert's identity: a resolve must render the same key as its trigger
    dedup_key: str = "{{ source }}/{{ id }}"
    summary: str = DEFAULT_TEXT
    #: critical | error | warning | info, or a template that renders one of them
    severity: str = "warning"
    #: the affected system (payload.source)
    source: str = "{{ source }}"
    component: str | None = None
    group: str | None = None
    class_: str | None = msgspec.field(default=None, name="class")
    url: str = PAGERDUTY_URL

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)
        if not self.routing_key:
            raise ValueError("routing_key: expected the integration key of a PagerDuty service")
        if not _is_template(self.severity) and self.severity not in PAGERDUTY_SEVERITIES:
            raise ValueError(
                f"severity: expected one of {', '.join(PAGERDUTY_SEVERITIES)} (or a template "
                f"that renders one), got {self.severity!r}"
            )
        for name in ("dedup_key", "summary", "severity", "source", "component", "group"):
            _check_template(name, getattr(self, name))
        _check_template("class", self.class_)


class HttpSink(_Base, frozen=True, tag_field="kind", tag="http"):
    """Any HTTP request built from templates (ServiceNow, Jira, a CMDB, ...)."""

    #: a template: `https://jira.example.com/rest/api/2/issue/{{ data.Key }}/comment`
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    #: a template; none: the event's data as it is (no body for GET and DELETE)
    body: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    auth: HttpAuth | None = None

    def __post_init__(self) -> None:
        head = self.url.split("{", 1)[0]
        if not _is_template(self.url) or "://" not in self.url:
            _check_http_url("url", self.url)
        elif not head.lower().startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http(s) URL, got {self.url!r}")
        _check_template("url", self.url)
        _check_template("body", self.body)


class EmailSink(_Base, frozen=True, tag_field="kind", tag="email"):
    """One e-mail per event over SMTP (STARTTLS on 587 by default), with optional login."""

    host: str
    from_: str = msgspec.field(name="from")
    to: list[str]
    #: default 587 (starttls), 465 (tls) or 25 (none)
    port: int | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    subject: str = "{{ subject | default(type, true) }}"
    body: str = DEFAULT_TEXT
    #: a PEM file of CA certificates to trust instead of the system's
    ca_file: str | None = None
    #: skip certificate verification (lab servers only)
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: expected the SMTP server's host name")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port: expected 1 to 65535, got {self.port}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username: username and password go together (give both or none)")
        if self.password is not None and self.security == "none":
            raise ValueError("security: a password would travel in clear text: use starttls or tls")
        if not self.to:
            raise ValueError("to: expected at least one recipient")
        for address in (self.from_, *self.to):
            if "@" not in address:
                raise ValueError(f"to: expected e-mail addresses, got {address!r}")
        _check_template("subject", self.subject)
        _check_template("body", self.body)


class EventBridgeSink(_Base, frozen=True, tag_field="kind", tag="eventbridge"):
    """AWS EventBridge PutEvents: detail-type = the vSphere event class, detail = the event."""

    #: none: the AWS_REGION / AWS_DEFAULT_REGION of the dispatcher's environment
    region: str | None = None
    event_bus: str = "default"
    #: the entry's Source; none: the CloudEvent's source (the vCenter URL)
    source: str | None = None
    #: another endpoint (a VPC endpoint, or moto in tests)
    endpoint_url: str | None = None
    #: none: boto3's credential chain (environment, profile, instance role)
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "access_key_id: access_key_id and secret_access_key go together "
                "(give both, or neither to use boto3's credential chain)"
            )
        if self.endpoint_url is not None:
            _check_http_url("endpoint_url", self.endpoint_url)
        if self.source is not None and not 1 <= len(self.source) <= 256:
            raise ValueError("source: expected 1 to 256 characters")


SYSLOG_FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SYSLOG_SEVERITIES = (
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
)  # fmt: skip


class SyslogSink(_Base, frozen=True, tag_field="kind", tag="syslog"):
    """RFC 5424 messages over UDP (at-most-once), TCP or TLS (octet-counting framing)."""

    host: str
    #: default 514 (udp, tcp) or 6514 (tls)
    port: int | None = None
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    facility: str = "user"
    severity: str = "notice"
    app_name: str = "vebus"
    #: HOSTNAME of each message; none: the host of the event's source (the vCenter)
    hostname: str | None = None
    #: a template for MSG; none: the event as one structured CloudEvents JSON object
    message: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: expected the syslog server's host name")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port: expected 1 to 65535, got {self.port}")
        if self.facility not in SYSLOG_FACILITIES:
            raise ValueError(
                f"facility: expected one of {', '.join(SYSLOG_FACILITIES)}, got {self.facility!r}"
            )
        if self.severity not in SYSLOG_SEVERITIES:
            raise ValueError(
                f"severity: expected one of {', '.join(SYSLOG_SEVERITIES)}, got {self.severity!r}"
            )
        _check_template("message", self.message)


_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


class NatsSink(_Base, frozen=True, tag_field="kind", tag="nats"):
    """Republish each event (CloudEvents NATS binding) to a subject on the same NATS."""

    #: a subject, or a template for one: `vsphere.{{ subject }}`
    subject: str
    #: true: fail (and retry) unless a stream stores the subject; false: publish to a stream
    #: when one stores the subject (publish ack), else as plain NATS (at-most-once)
    require_stream: bool = False

    def __post_init__(self) -> None:
        if _is_template(self.subject):
            _check_template("subject", self.subject)
        elif not _SUBJECT.match(self.subject):
            raise ValueError(
                f"subject: expected a NATS subject without wildcards, got {self.subject!r}"
            )
        if self.subject == "vebus" or self.subject.startswith("vebus."):
            raise ValueError(
                f"subject: {self.subject!r} is inside vebus's own subjects (vebus.>): "
                "republishing there would loop; pick another prefix"
            )


class VsphereSink(VCenterEndpoint, frozen=True, kw_only=True, tag_field="kind", tag="vsphere"):
    """Set a custom attribute or the annotation on the VM the event names (pyvmomi)."""

    action: Literal["attribute", "annotation"] = "attribute"
    #: the custom attribute's name (action: attribute); created on first use if missing
    attribute: str | None = None
    #: a template for the attribute's value or the annotation's text
    value: str = "{{ type }} at {{ time }}"
    #: annotation only: add `value` as a new last line instead of replacing the annotation
    append: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action == "attribute" and not self.attribute:
            raise ValueError("attribute: expected the custom attribute's name (action: attribute)")
        if self.action == "annotation" and self.attribute is not None:
            raise ValueError("attribute: only for action: attribute")
        if self.append and self.action != "annotation":
            raise ValueError("append: only for action: annotation")
        _check_template("value", self.value)


class FunctionSink(_Base, frozen=True, tag_field="kind", tag=FUNCTION_SINK):
    """Run a function of the functions service on each event (`functions:` declares it)."""

    #: the name of a function declared in `functions:` of the functions service's config
    function: str

    def __post_init__(self) -> None:
        try:
            _check_name("function", self.function)
        except ValueError as e:
            raise ValueError(f"function: {e}") from None


Sink = (
    WebhookSink
    | ConsoleSink
    | SlackSink
    | TeamsSink
    | PagerDutySink
    | HttpSink
    | EmailSink
    | EventBridgeSink
    | SyslogSink
    | NatsSink
    | VsphereSink
    | FunctionSink
)


class Route(_Base, frozen=True):
    """Events that match `match` are delivered to `sink` under the `delivery` policy."""

    name: str
    sink: Sink
    match: dict[str, Any] = msgspec.field(default_factory=dict)
    delivery: Delivery = msgspec.field(default_factory=Delivery)

    def __post_init__(self) -> None:
        _check_name("route", self.name)
        if self.name.startswith("_"):
            raise ValueError(f"route name {self.name!r} may not start with '_' (reserved)")
        if self.match:
            from vebus.errors import PatternError
            from vebus.events.patterns import compile_pattern

            try:
                compile_pattern(self.match, path="match")
            except PatternError as e:
                raise ValueError(str(e)) from None

    @property
    def sink_kind(self) -> str:
        """The sink's `kind` as written (`webhook`, `slack`, `function`, ...)."""
        return str(self.sink.__struct_config__.tag)


class DeadletterApiConfig(_Base, frozen=True):
    """The deadletter service's HTTP API: list, show, replay and purge dead letters."""

    #: host:port to listen on (loopback by default); "" turns the API off
    listen: str = "127.0.0.1:8085"
    #: `Authorization: Bearer <token>` that replay and purge require; unset or "": refused
    token: str | None = None

    def __post_init__(self) -> None:
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(
                    f'listen: expected host:port (or "" for no API), got {self.listen!r}'
                )
        if self.token and not is_unresolved(self.token) and len(self.token) < 16:
            raise ValueError("token: expected at least 16 characters (use a random secret)")


class DeadletterAlertConfig(_Base, frozen=True):
    """A CloudEvent sent to a route when one route's dead letters reach a threshold."""

    #: the route that receives the alert (give it a match that no other event has)
    route: str
    #: dead letters of one route at which the alert fires
    threshold: int = 100
    #: how often the deadletter service counts
    interval: Duration = Duration(30)

    def __post_init__(self) -> None:
        _check_name("route", self.route)
        if self.threshold < 1:
            raise ValueError(f"threshold: expected >= 1, got {self.threshold}")
        if self.interval <= 0:
            raise ValueError("interval: expected a duration > 0")


class DeadletterConfig(_Base, frozen=True):
    """The deadletter service: its HTTP API, replay rate, and the dead-letter alert."""

    api: DeadletterApiConfig = msgspec.field(default_factory=DeadletterApiConfig)
    #: dead letters replayed per second unless a replay says otherwise; 0: no limit
    replay_rate: float = 50.0
    alert: DeadletterAlertConfig | None = None

    def __post_init__(self) -> None:
        if self.replay_rate < 0:
            raise ValueError(f"replay_rate: expected >= 0 (0: no limit), got {self.replay_rate}")


# ---------------------------------------------------------------------------- console


def _check_listen(listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen: expected host:port, got {listen!r}")


class ConsoleUser(_Base, frozen=True):
    """Who may sign in to the console: a password, a bearer token, or both, kept hashed."""

    name: str
    #: viewer: read every page; operator: also pause, apply, replay and purge
    role: Literal["viewer", "operator"] = "viewer"
    #: `python -m vebus_console.passwd` prints it (scrypt; never the password itself)
    password_hash: str | None = None
    #: the same for a bearer token (`Authorization: Bearer <token>`)
    token_hash: str | None = None

    def __post_init__(self) -> None:
        _check_name("user", self.name)
        if not self.password_hash and not self.token_hash:
            raise ValueError("give password_hash, token_hash, or both")
        for field, value in (("password_hash", self.password_hash),
                             ("token_hash", self.token_hash)):  # fmt: skip
            if value and not is_unresolved(value) and not is_hash(value):
                raise ValueError(
                    f"{field}: expected a hash from `python -m vebus_console.passwd` "
                    "(scrypt$...), not the secret itself"
                )


class ConsoleTls(_Base, frozen=True):
    """HTTPS for the console: a PEM certificate (chain) and its key."""

    cert_file: str
    key_file: str


class ConsoleConfig(_Base, frozen=True):
    """The web console (docs/console.md)."""

    #: host:port of the pages; loopback unless you put it behind your own access control
    listen: str = f"127.0.0.1:{CONSOLE_PORT}"
    users: list[ConsoleUser] = msgspec.field(default_factory=list)
    tls: ConsoleTls | None = None
    #: the deadletter service's HTTP API: replays and purges go through it (its token is
    #: `deadletter.api.token`)
    deadletter_url: str = f"http://127.0.0.1:{DEADLETTER_API_PORT}"
    #: how long a sign-in lasts
    session_max_age: Duration = Duration(12 * 3600)
    #: events per second one page is sent at most; past it the server samples
    live_rate: float = 50.0
    #: signs the sign-in cookies: give every replica the same one (a `${VARIABLE}` of at
    #: least 32 characters) so that a sign-in holds across replicas and restarts; unset:
    #: a random key per process
    session_key: str | None = None

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        _check_http_url("deadletter_url", self.deadletter_url)
        if not 1 <= self.live_rate <= 10_000:
            raise ValueError(f"live_rate: expected 1 to 10000 events/s, got {self.live_rate:g}")
        if self.session_max_age < 60:
            raise ValueError("session_max_age: expected at least 1m")
        if self.session_key and not is_unresolved(self.session_key) and len(self.session_key) < 32:
            raise ValueError("session_key: expected at least 32 characters (a random secret)")
        seen: set[str] = set()
        for user in self.users:
            if user.name in seen:
                raise ValueError(f"users: {user.name!r} is listed twice")
            seen.add(user.name)


# ---------------------------------------------------------------------------- checks


class CheckScope(_Base, frozen=True):
    """Which objects a scheduled check looks at; an empty list means all of them."""

    #: names from `vcenters:`; empty: every vCenter
    vcenters: list[str] = msgspec.field(default_factory=list)
    #: datacenter names; empty: every datacenter
    datacenters: list[str] = msgspec.field(default_factory=list)
    #: shell-style patterns (`prod-*`, case-sensitive) on the VM or datastore name; empty: all
    names: list[str] = msgspec.field(default_factory=list)
    #: patterns of names left out even when `names` matches them
    exclude: list[str] = msgspec.field(default_factory=list)


def _check_check(name: str, interval: float) -> None:
    """What every scheduled check requires: a usable name and an interval of 1s or more."""
    try:
        _check_name("check", name)
    except ValueError as e:
        raise ValueError(f"name: {e}") from None
    if interval < 1:
        raise ValueError(f"interval: expected a duration of at least 1s, got {interval:g}s")


class SnapshotAgeCheck(_Base, frozen=True, tag_field="kind", tag="snapshot_age"):
    """Every VM snapshot older than `threshold`: com.vebus.check.SnapshotAgeExceeded.v0."""

    name: str
    #: how old a snapshot may get
    threshold: Duration = Duration(7 * 86400)
    interval: Duration = Duration(3600)
    scope: CheckScope = msgspec.field(default_factory=CheckScope)

    def __post_init__(self) -> None:
        _check_check(self.name, self.interval)
        if self.threshold <= 0:
            raise ValueError("threshold: expected a duration > 0 (the age a snapshot may reach)")


class DatastoreUsageCheck(_Base, frozen=True, tag_field="kind", tag="datastore_usage"):
    """Datastores more than `threshold` percent full: ...DatastoreUsageExceeded.v0."""

    name: str
    #: used capacity in percent (0-100) at which the condition starts
    threshold: float = 85.0
    #: the condition clears when usage drops below this (default: `threshold`); a lower
    #: value keeps a datastore that hovers around the threshold from flapping
    clear_below: float | None = None
    interval: Duration = Duration(300)
    scope: CheckScope = msgspec.field(default_factory=CheckScope)

    def __post_init__(self) -> None:
        _check_check(self.name, self.interval)
        if not 0 <= self.threshold <= 100:
            raise ValueError(f"threshold: expected a percentage, 0 to 100, got {self.threshold}")
        if self.clear_below is not None and not 0 <= self.clear_below <= self.threshold:
            raise ValueError(
                f"clear_below: expected a percentage from 0 up to threshold "
                f"({self.threshold:g}), got {self.clear_below}"
            )


class VmPoweredOffCheck(_Base, frozen=True, tag_field="kind", tag="vm_powered_off"):
    """VMs powered off for longer than `threshold`: ...VmPoweredOffTooLong.v0."""

    name: str
    #: how long a VM may stay powered off
    threshold: Duration = Duration(30 * 86400)
    interval: Duration = Duration(3600)
    scope: CheckScope = msgspec.field(default_factory=CheckScope)

    def __post_init__(self) -> None:
        _check_check(self.name, self.interval)
        if self.threshold <= 0:
            raise ValueError("threshold: expected a duration > 0 (how long a VM may stay off)")


Check = SnapshotAgeCheck | DatastoreUsageCheck | VmPoweredOffCheck


# ---------------------------------------------------------------------------- functions

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYTHON_TARGET = re.compile(r"^(?P<where>[^:]+?)(?::(?P<attr>[A-Za-z_][A-Za-z0-9_]*))?$")


class FunctionVCenterAccount(_Base, frozen=True):
    """A vCenter account of a function's own, used instead of `vcenters[]`'s (the URL and
    TLS settings still come from `vcenters[]`)."""

    username: str
    password: str = ""
    #: a file holding the password (a mounted secret), read at each login
    password_file: str | None = None

    def __post_init__(self) -> None:
        if self.password and self.password_file:
            raise ValueError("password_file: give either password or password_file, not both")
        if not self.password and not self.password_file:
            raise ValueError("password: required (or password_file)")


class HttpFunction(_Base, frozen=True):
    """A function server (a VEBA/Knative function folder) that vebus starts and supervises;
    it must listen on 127.0.0.1 at the port in $PORT and takes binary CloudEvents."""

    #: the server's command line, e.g. [python3, handler.py]
    command: list[str]
    #: where events are POSTed
    path: str = "/"
    #: a GET that answers below 500 once the server is ready; none: it accepts connections
    ready_path: str | None = None
    #: how long the server may take to become ready after it starts
    start_timeout: Duration = Duration(30)

    def __post_init__(self) -> None:
        if not self.command or not all(self.command):
            raise ValueError("command: expected the server's command line, a non-empty list")
        for name in ("path", "ready_path"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{name}: expected a path starting with '/', got {value!r}")
        if self.start_timeout <= 0:
            raise ValueError("start_timeout: expected a duration > 0")


class FunctionConfig(_Base, frozen=True):
    """A function: the operator's code that the functions service runs on the events of the
    routes that name it (`sink: {kind: function, function: NAME}`). Exactly one runtime:
    `python`, `command` or `http`."""

    name: str
    #: `path/to/file.py:handle` (relative to `workdir`) or `package.module:handle`
    python: str | None = None
    #: a program run once per event: the structured CloudEvent on stdin, exit status 0 done,
    #: 75 retry later, 65 reject; a JSON document on stdout is a reply
    command: list[str] | None = None
    #: a function server started and supervised by the service
    http: HttpFunction | None = None
    #: the folder the function runs in and relative paths start from; default: the folder
    #: of the config file
    workdir: str | None = None
    #: environment variables of the function's processes (not secret: may be shown)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: environment variables holding secrets, usually `${ENV}` references resolved from the
    #: functions service's environment; never logged (also `ctx.secrets` in Python)
    secrets: dict[str, str] = msgspec.field(default_factory=dict)
    #: the longest an invocation may run before its process is killed (the route's
    #: `delivery.timeout` bounds it too); none: only the route's
    timeout: Duration | None = None
    #: worker processes (python), commands at once (command) or requests at once (http),
    #: per functions replica
    workers: int = 2
    #: resident memory in MiB past which a worker is killed (busy) or replaced (idle)
    memory_mb: int | None = None
    #: run the function's processes as this user (`name`, `uid` or `uid:gid`); the service
    #: must run as root to switch
    run_as: str | None = None
    #: true: `ctx.vcenter` logs in with the `vcenters[]` account of the event's vCenter;
    #: an account: logs in with that one instead; false: no vCenter session
    vcenter: bool | FunctionVCenterAccount = False
    #: a reply chain is cut here: an event that has passed through this many functions
    #: (its `vebushops` extension) is dead-lettered HOP_LIMIT instead of run
    max_hops: int = 8

    def __post_init__(self) -> None:
        _check_name("function", self.name)
        given = [k for k in ("python", "command", "http") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "python: give exactly one runtime: python (a handler), command (a program "
                f"run per event) or http (a function server); got {', '.join(given) or 'none'}"
            )
        if self.python is not None:
            m = _PYTHON_TARGET.match(self.python.strip())
            if not m or not m.group("where").strip():
                raise ValueError(
                    f"python: expected file.py:function or package.module:function, "
                    f"got {self.python!r}"
                )
        if self.command is not None and (not self.command or not all(self.command)):
            raise ValueError("command: expected the program and its arguments, a non-empty list")
        for field in ("env", "secrets"):
            for key in getattr(self, field):
                if not _ENV_NAME.match(key):
                    raise ValueError(
                        f"{field}: {key!r} is not an environment variable name (letters, "
                        "digits and _, not starting with a digit)"
                    )
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(f"secrets: {both[0]!r} is in env too; give it once")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout: expected a duration > 0 (leave it out for the route's)")
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1, got {self.workers}")
        if self.memory_mb is not None and self.memory_mb < 16:
            raise ValueError(f"memory_mb: expected at least 16 (MiB), got {self.memory_mb}")
        if self.run_as is not None and not self.run_as.strip():
            raise ValueError("run_as: expected a user name, a uid or uid:gid")
        if self.max_hops < 1:
            raise ValueError(f"max_hops: expected >= 1, got {self.max_hops}")

    @property
    def runtime(self) -> str:
        """`python`, `command` or `http`."""
        return "python" if self.python is not None else "command" if self.command else "http"


class Config(_Base, frozen=True):
    """The whole vebus.yaml."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    streams: StreamsConfig = msgspec.field(default_factory=StreamsConfig)
    vcenters: list[VCenterConfig] = msgspec.field(default_factory=list)
    #: the webhook event source (off unless configured)
    webhook: WebhookSourceConfig | None = None
    routes: list[Route] = msgspec.field(default_factory=list)
    #: the deadletter service (HTTP API, replays, alert)
    deadletter: DeadletterConfig = msgspec.field(default_factory=DeadletterConfig)
    #: scheduled checks the collector runs against its vCenters (docs/checks.md)
    checks: list[Check] = msgspec.field(default_factory=list)
    #: the web console (vebus_console)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    #: the functions the functions service runs (docs/functions.md); routes name them
    functions: list[FunctionConfig] = msgspec.field(default_factory=list)

    def function(self, name: str) -> FunctionConfig | None:
        """The function called `name`, or None."""
        for f in self.functions:
            if f.name == name:
                return f
        return None

    def stream_settings(self) -> StreamSettings:
        """The streams' settings as vebus.bus.streams takes them."""
        s = self.streams
        return StreamSettings(
            replicas=self.nats.replicas,
            events_max_age=float(s.events_max_age),
            events_max_bytes=s.events_max_bytes,
            route_max_msgs=s.route_max_msgs,
            dlq_max_age=float(s.dlq_max_age),
            duplicate_window=float(s.duplicate_window),
        )

    def route(self, name: str) -> Route:
        """The route called `name` (KeyError if there is none)."""
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


# ---------------------------------------------------------------------------- loading


#: the top-level sections whose `${ENV}` references each service resolves; elsewhere a
#: variable the process lacks stays an unresolved reference (secrets are resolved only
#: by the process that uses them: the filter needs no sink token, nor the vCenter password)
SERVICE_SECRETS: dict[str, frozenset[str]] = {
    "collector": frozenset({"nats", "vcenters", "webhook", "checks"}),
    "filter": frozenset({"nats"}),
    "dispatcher": frozenset({"nats", "routes"}),
    "deadletter": frozenset({"nats", "deadletter"}),
    # the functions' own secrets; the vCenters' passwords are taken when set (a function
    # with `vcenter: true` that needs a missing one says so when it starts)
    "functions": frozenset({"nats", "functions"}),
    # the console calls the deadletter API with its token
    "console": frozenset({"nats", "console", "deadletter"}),
    "cli": frozenset({"nats"}),
}


def env_references(value: Any) -> list[tuple[str, str | None]]:
    """Every `${NAME}` (name, None) or `${NAME:-default}` (name, default) in `value`, a
    string or any nesting of lists and mappings, in order and each once."""
    found: list[tuple[str, str | None]] = []
    if isinstance(value, str):
        for m in _ENV_REF.finditer(value):
            if (ref := (m.group(1), m.group(2))) not in found:
                found.append(ref)
    elif isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            found += [ref for ref in env_references(item) if ref not in found]
    return found


def is_unresolved(value: str) -> bool:
    """True for a value that still holds a `${NAME}` reference (validated where resolved)."""
    return _ENV_REF.search(value) is not None


def _resolve_env(
    value: Any,
    path: str,
    env: Mapping[str, str],
    errors: list[str],
    sections: frozenset[str] | None = None,
    whole: set[str] | None = None,
) -> Any:
    if isinstance(value, str):
        if whole is not None and _ENV_REF.fullmatch(value):
            whole.add(path)  # all of it from the environment: may become a number (_typed)
        section = re.split(r"[.\[]", path, maxsplit=1)[0]
        needed = sections is None or section in sections

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            if not needed:
                return m.group(0)
            errors.append(
                f"{path}: environment variable {name} is not set "
                f"(referenced as ${{{name}}}; set it, or give a default: ${{{name}:-value}})"
            )
            return m.group(0)  # left unresolved: no second error from the field's check

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _resolve_env(v, _join(path, str(k)), env, errors, sections, whole)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _resolve_env(v, f"{path}[{i}]", env, errors, sections, whole)
            for i, v in enumerate(value)
        ]
    return value


def _typed(value: Any, typ: Any) -> Any:
    """A value that is one whole `${ENV}` reference, as the number or boolean its field
    takes (`port: ${SMTP_PORT:-587}`): environment variables are always text. A value
    written in the file itself is never converted (`max_attempts: "3"` is an error)."""
    if not isinstance(value, str):
        return value
    accepted = set(getattr(typ, "__args__", None) or (typ,))
    text = value.strip()
    if int in accepted and re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if float in accepted and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        return float(text)
    if bool in accepted and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_EXPECTED = re.compile(r"Expected `(?P<exp>[^`]+)`, got `(?P<got>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")


def _describe(err: msgspec.ValidationError, prefix: str) -> tuple[str, str | None]:
    """One readable line for a msgspec error, and the unknown key if that was the problem."""
    m = _AT.match(str(err))
    assert m is not None
    msg, sub = m.group("msg"), (m.group("path") or "").lstrip(".")
    path = prefix + ("." + sub if sub and not sub.startswith("[") else sub)
    if u := _UNKNOWN.match(msg):
        field = u.group("field")
        return f"{_join(path, field)}: unknown key {field!r} (check the spelling)", field
    if e := _EXPECTED.match(msg):
        exp = e.group("exp").replace("array", "a list").replace("object", "a mapping")
        return f"{path}: expected {exp}, got {e.group('got')}", None
    if mm := _MISSING.match(msg):
        return f"{_join(path, mm.group('field'))}: required key is missing", None
    if msg.startswith("Invalid value") and re.fullmatch(r"checks\[\d+\]\.kind", path):
        kinds = ", ".join(t.__struct_config__.tag for t in _CHECKS)  # type: ignore[misc]
        return f"{path}: {msg[0].lower()}{msg[1:]} (expected one of: {kinds})", None
    if msg.startswith("Invalid value") and path.endswith(("sink.kind", "auth.kind")):
        union = _SINKS if path.endswith("sink.kind") else _AUTHS
        kinds = ", ".join(t.__struct_config__.tag for t in union)  # type: ignore[misc]
        return f"{path}: {msg[0].lower()}{msg[1:]} (expected one of: {kinds})", None
    if f := _FIELD_MSG.match(msg):
        return f"{_join(path, f.group('field'))}: {f.group('rest')}", None
    return f"{path}: {msg}", None


_FIELD_MSG = re.compile(r"^(?P<field>[a-z_]+): (?P<rest>.*)$", re.S)
_AUTHS: tuple[type[msgspec.Struct], ...] = (BearerAuth, BasicAuth, HmacAuth)
_CHECKS: tuple[type[msgspec.Struct], ...] = (
    SnapshotAgeCheck,
    DatastoreUsageCheck,
    VmPoweredOffCheck,
)
_SINKS: tuple[type[msgspec.Struct], ...] = (
    WebhookSink,
    ConsoleSink,
    SlackSink,
    TeamsSink,
    PagerDutySink,
    HttpSink,
    EmailSink,
    EventBridgeSink,
    SyslogSink,
    NatsSink,
    VsphereSink,
    FunctionSink,
)


def _struct_types(typ: Any) -> list[type[msgspec.Struct]]:
    """The Struct types a field annotation may hold (one, or the members of a union)."""
    args = getattr(typ, "__args__", None)
    if args and not (isinstance(typ, type) and issubclass(typ, msgspec.Struct)):
        return [a for a in args if isinstance(a, type) and issubclass(a, msgspec.Struct)]
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        return [typ]
    return []


def _drop_unknown(
    raw: Any, typ: Any, path: str, errors: list[str], whole: set[str] | None = None
) -> Any:
    """A copy of `raw` without keys `typ` does not know, each reported; recurses into structs."""
    if not isinstance(raw, dict):
        return raw
    candidates = _struct_types(typ)
    if not candidates:
        return raw
    struct = candidates[0]
    if len(candidates) > 1:  # a tagged union: pick the member by its tag
        tags = {t.__struct_config__.tag: t for t in candidates}
        struct = tags.get(raw.get("kind"), struct)
        if raw.get("kind") not in tags:
            return raw  # the tag error itself is reported by the decoder
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(struct)}
    optional = {f.encode_name for f in msgspec.structs.fields(struct) if not f.required}
    tag_field = struct.__struct_config__.tag_field
    out: dict[str, Any] = {}
    for key, value in raw.items():
        sub = _join(path, str(key))
        if key == tag_field:
            out[key] = value
        elif key not in fields:
            errors.append(
                f"{sub}: unknown key {key!r} (expected one of: {', '.join(sorted(fields))})"
            )
        elif isinstance(value, list) and (item := getattr(fields[key], "__args__", None)):
            out[key] = [
                _drop_unknown(v, item[0], f"{sub}[{i}]", errors, whole) for i, v in enumerate(value)
            ]
        elif whole is not None and sub in whole:
            typed = _typed(value, fields[key])
            text_field = str in set(getattr(fields[key], "__args__", None) or (fields[key],))
            if (
                isinstance(typed, str)
                and is_unresolved(typed)
                and key in optional
                and not text_field
            ):
                # another service's variable, unset here (this process's own are reported
                # as unset): the field's default stands in, so that `port: ${SMTP_PORT}` in
                # a route does not stop the collector, which has no SMTP_PORT
                continue
            out[key] = typed
        else:
            out[key] = _drop_unknown(value, fields[key], sub, errors, whole)
    return out


def _convert(
    raw: Any, typ: type[Any], path: str, errors: list[str], whole: set[str] | None = None
) -> Any:
    """Decode `raw` into `typ`, reporting every unknown key and then the first other error."""
    before = len(errors)
    raw = _drop_unknown(raw, typ, path, errors, whole)
    try:
        value = msgspec.convert(raw, typ, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        errors.append(_describe(e, path)[0])
        return None
    return value if len(errors) == before else None


def parse_config(
    raw: Any, env: Mapping[str, str] | None = None, *, service: str | None = None
) -> Config:
    """A Config from already-parsed YAML; raises ConfigError listing every problem found.

    With `service`, only the sections that service takes secrets from must have their
    `${ENV}` references set (SERVICE_SECRETS); without it, all must.
    """
    env = os.environ if env is None else env
    errors: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(raw).__name__}"])
    sections = SERVICE_SECRETS.get(service) if service else None
    whole: set[str] = set()  # paths whose value was one ${ENV} reference
    raw = _resolve_env(raw, "", env, errors, sections, whole)
    fields = {f.name: f for f in msgspec.structs.fields(Config)}
    parts: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            errors.append(
                f"{key}: unknown key {key!r} (expected one of: {', '.join(sorted(fields))})"
            )
            continue
        if key in ("vcenters", "routes", "checks", "functions"):
            item_type: Any = {
                "vcenters": VCenterConfig,
                "routes": Route,
                "checks": Check,
                "functions": FunctionConfig,
            }[key]
            if value is None:
                value = []
            if not isinstance(value, list):
                errors.append(f"{key}: expected a list, got {type(value).__name__}")
                continue
            items = [
                _convert(v, item_type, f"{key}[{i}]", errors, whole) for i, v in enumerate(value)
            ]
            parts[key] = items
        else:
            parts[key] = _convert(
                {} if value is None else value, fields[key].type, key, errors, whole
            )
    for key in ("vcenters", "routes", "checks", "functions"):
        seen: set[str] = set()
        for i, item in enumerate(parts.get(key) or []):
            if item is None:
                continue
            if token(item.name) in seen:
                errors.append(f"{key}[{i}].name: {item.name!r} is used twice")
            seen.add(token(item.name))
    _check_scopes(parts, errors)
    _check_functions(parts, errors)
    if errors:
        raise ConfigError(errors)
    return Config(**{k: v for k, v in parts.items() if v is not None})


def _check_scopes(parts: dict[str, Any], errors: list[str]) -> None:
    """Every vCenter a check's scope names must be configured."""
    names = {vc.name for vc in parts.get("vcenters") or [] if vc is not None}
    for i, check in enumerate(parts.get("checks") or []):
        for j, name in enumerate(check.scope.vcenters if check is not None else []):
            if name not in names:
                known = ", ".join(sorted(names)) or "none configured"
                errors.append(
                    f"checks[{i}].scope.vcenters[{j}]: no vCenter named {name!r} "
                    f"(expected one of: {known})"
                )


def _check_functions(parts: dict[str, Any], errors: list[str]) -> None:
    """When the file declares functions, every function route must name one of them (a
    file without `functions:` may route to the functions another config declares)."""
    declared = {f.name for f in parts.get("functions") or [] if f is not None}
    if not declared:
        return
    for i, route in enumerate(parts.get("routes") or []):
        sink = route.sink if route is not None else None
        if isinstance(sink, FunctionSink) and sink.function not in declared:
            errors.append(
                f"routes[{i}].sink.function: no function named {sink.function!r} "
                f"(functions: {', '.join(sorted(declared))})"
            )


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, *, service: str | None = None
) -> Config:
    """Read and validate a vebus.yaml; raises ConfigError with one line per problem.

    `service` limits which `${ENV}` references must be set (see parse_config).
    """
    return parse_config(read_yaml(path), env, service=service)


def read_yaml(path: str | Path) -> Any:
    """The YAML document of a config file, unchecked; ConfigError naming the file when it
    cannot be read, is not UTF-8 or is not YAML (with the line and column of the problem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read the config file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{p}: not UTF-8 text (byte {e.start}): save the config file as UTF-8"]
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{p}: not valid YAML{where}: {problem}"]) from None
