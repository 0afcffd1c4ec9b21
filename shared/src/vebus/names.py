"""Every name vebus gives things on NATS and on the machine, in one module.

Streams, subjects, consumers, KV buckets, control subjects, headers, JetStream error
codes, services, default ports and environment variables. Subjects, streams and headers
are public API: any program may subscribe to `vebus.events.>` or read a dead letter's
`vebus-dlq-*` headers. No other module writes one of these out (tests/unit/test_names.py
checks the product code for the literals); this module imports nothing of vebus.
"""

from __future__ import annotations

import re

__all__ = [
    "CE_PREFIX",
    "CE_TRACEPARENT",
    "CHECKPOINT_BUCKET",
    "CHECKS_BUCKET",
    "CHECKS_SOURCE",
    "CONSOLE_PORT",
    "CONTENT_TYPE",
    "DEADLETTER_API_PORT",
    "DEADLETTER_BUCKET",
    "DEADLETTER_QUEUE",
    "DELIVERING_SERVICES",
    "DISPATCHER_DURABLE_PREFIX",
    "DLQ_HEADER_PREFIX",
    "DLQ_INVALID_ROUTE",
    "DLQ_PREFIX",
    "DLQ_STREAM",
    "DLQ_SUBJECTS",
    "ENV_CONFIG",
    "ENV_CONSOLE_LISTEN",
    "ENV_CONSOLE_TOKEN",
    "ENV_DLQ_TOKEN",
    "ENV_EVENT_LOOP",
    "ENV_FUNCTION",
    "ENV_HEALTH_HOST",
    "ENV_HEALTH_PORT",
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "ENV_METRICS_POLL",
    "ENV_NATS_PASSWORD",
    "ENV_NATS_URL",
    "ENV_NATS_USER",
    "ENV_PORT",
    "ENV_VCSIM",
    "EVENTS_PREFIX",
    "EVENTS_STREAM",
    "EVENTS_SUBJECTS",
    "FILTER_DURABLE",
    "FUNCTIONS_DURABLE_PREFIX",
    "FUNCTIONS_SOURCE",
    "FUNCTION_LOGS_PREFIX",
    "FUNCTION_LOGS_SUBJECT",
    "FUNCTION_SINK",
    "FUNCTION_SOURCE_PREFIX",
    "FUNCTION_TYPE_PREFIX",
    "HEALTH_PORTS",
    "HOPS_EXTENSION",
    "H_DLQ_ATTEMPTS",
    "H_DLQ_CODE",
    "H_DLQ_DETAIL",
    "H_DLQ_ERROR",
    "H_DLQ_EXHAUSTED",
    "H_DLQ_FIRST",
    "H_DLQ_LAST",
    "H_DLQ_MSG_ID",
    "H_DLQ_OMITTED",
    "H_DLQ_ROUTE",
    "H_DLQ_SINK",
    "H_DLQ_STATUS",
    "H_EPOCH",
    "H_KEY",
    "H_SIGNATURE",
    "H_SIGNED_AT",
    "H_VCENTER",
    "JS_ERR_MAX_MSGS_PER_SUBJECT",
    "JS_ERR_MSG_DELETE_FAILED",
    "LEASE_BUCKET",
    "MAX_DELIVERIES_ADVISORY",
    "MSG_ID",
    "NATS_MONITOR_PORT",
    "NATS_PORT",
    "RATE_BUCKET",
    "REPLAY_EXTENSION",
    "RESERVED_SOURCES",
    "ROUTES_BUCKET",
    "ROUTES_PREFIX",
    "ROUTES_STATUS_SUBJECT",
    "ROUTES_STREAM",
    "ROUTES_SUBJECTS",
    "ROUTE_DURABLE_PREFIXES",
    "ROUTE_SERVICES",
    "SERVICES",
    "SRV_PING",
    "SRV_STATS",
    "STATUS_PREFIX",
    "SUBJECT_ROOT",
    "SUBSCRIBER_DURABLE",
    "TRACEPARENT",
    "TRACESTATE",
    "TRUNCATED_EXTENSION",
    "VCSIM_PORT",
    "WEBHOOK_PORT",
    "WEBHOOK_SOURCE",
    "WIRE_HEADER",
    "WIRE_VERSION",
    "dispatcher_durable",
    "distribution",
    "dlq_subject",
    "event_subject",
    "function_logs_subject",
    "function_reply_msg_id",
    "functions_durable",
    "micro_service",
    "route_of_dlq_subject",
    "route_of_durable",
    "route_subject",
    "service_module",
    "service_of_micro",
    "status_subject",
    "stream_of_subject",
    "token",
    "vcenter_subjects",
]

# ---------------------------------------------------------------- streams and subjects

#: the first token of every vebus subject; other programs' subjects may not start with it
SUBJECT_ROOT = "vebus"
EVENTS_STREAM = "VEBUS_EVENTS"
ROUTES_STREAM = "VEBUS_ROUTES"
DLQ_STREAM = "VEBUS_DLQ"
EVENTS_PREFIX = "vebus.events"
ROUTES_PREFIX = "vebus.routes"
DLQ_PREFIX = "vebus.dlq"
EVENTS_SUBJECTS = EVENTS_PREFIX + ".>"
ROUTES_SUBJECTS = ROUTES_PREFIX + ".>"
DLQ_SUBJECTS = DLQ_PREFIX + ".>"
#: the second token of a stream's subjects -> the stream
_STREAM_OF_TOKEN = {"events": EVENTS_STREAM, "routes": ROUTES_STREAM, "dlq": DLQ_STREAM}

#: a dead letter of an event that failed before any route was chosen
DLQ_INVALID_ROUTE = "_invalid"
#: the event sources that are not vCenters: their names are subject tokens a vCenter may
#: not take (`vebus.events.webhook.<type>`, `vebus.events.checks.<check>`, ...)
WEBHOOK_SOURCE = "webhook"
CHECKS_SOURCE = "checks"
FUNCTIONS_SOURCE = "functions"
RESERVED_SOURCES = frozenset({WEBHOOK_SOURCE, CHECKS_SOURCE, FUNCTIONS_SOURCE})

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """One subject token: every character outside [A-Za-z0-9_-] becomes `_`."""
    return _UNSAFE.sub("_", value) or "_"


def event_subject(source: str, event_class: str) -> str:
    """`vebus.events.<source>.<class>`, always four tokens."""
    return f"{EVENTS_PREFIX}.{token(source)}.{token(event_class)}"


def vcenter_subjects(source: str) -> str:
    """`vebus.events.<source>.>`: every event of one source."""
    return f"{EVENTS_PREFIX}.{token(source)}.>"


def route_subject(route: str) -> str:
    """`vebus.routes.<route>`."""
    return f"{ROUTES_PREFIX}.{token(route)}"


def dlq_subject(route: str) -> str:
    """`vebus.dlq.<route>`; `vebus.dlq._invalid` for events that failed before routing."""
    return f"{DLQ_PREFIX}.{token(route)}"


def route_of_dlq_subject(subject: str) -> str:
    """The route token of a dead letter's subject (the subject itself if it is not one)."""
    return subject.removeprefix(DLQ_PREFIX + ".")


def stream_of_subject(subject: str) -> tuple[str, str]:
    """(stream, the subject's third token) of a vebus subject; ("", "") for another one."""
    parts = subject.split(".", 3)
    if len(parts) >= 3 and parts[0] == SUBJECT_ROOT and parts[1] in _STREAM_OF_TOKEN:
        return _STREAM_OF_TOKEN[parts[1]], parts[2]
    return "", ""


#: the subjects of a NATS KV bucket's entries start so; its stream is `KV_<bucket>`
KV_SUBJECT_PREFIX = "$KV."
KV_STREAM_PREFIX = "KV_"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a write of `key` in KV `bucket` is published to."""
    return f"{KV_SUBJECT_PREFIX}{bucket}.{key}"


def stream_name_of(subject: str) -> str:
    """The stream a publish to `subject` goes to: a vebus stream, a KV bucket's stream
    (`$KV.<bucket>.<key>` -> `KV_<bucket>`), else the subject itself."""
    stream, _ = stream_of_subject(subject)
    if stream:
        return stream
    if subject.startswith(KV_SUBJECT_PREFIX):
        return KV_STREAM_PREFIX + subject[len(KV_SUBJECT_PREFIX) :].split(".", 1)[0]
    return subject


# ---------------------------------------------------------------- durable consumers

FILTER_DURABLE = "vebus-filter"
#: the durable consumer on VEBUS_EVENTS that the `subscriber` NATS user may use (and no
#: other): how another program reads the events at-least-once (deploy/nats/auth.conf)
SUBSCRIBER_DURABLE = "subscriber"
#: the consumer every dispatcher replica shares for a route: the route name follows
DISPATCHER_DURABLE_PREFIX = "vebus-dispatch-"
#: the consumer every functions replica shares for a route whose sink is a function
FUNCTIONS_DURABLE_PREFIX = "vebus-fn-"
#: the consumers of VEBUS_ROUTES that deliver a route's events, one kind per service
ROUTE_DURABLE_PREFIXES = (DISPATCHER_DURABLE_PREFIX, FUNCTIONS_DURABLE_PREFIX)


def dispatcher_durable(route: str) -> str:
    """The durable consumer name the dispatchers share for one route."""
    return f"{DISPATCHER_DURABLE_PREFIX}{token(route)}"


def functions_durable(route: str) -> str:
    """The durable consumer name the functions replicas share for one route."""
    return f"{FUNCTIONS_DURABLE_PREFIX}{token(route)}"


def route_of_durable(durable: str) -> str | None:
    """The route (token) a route consumer delivers; None for any other consumer."""
    for prefix in ROUTE_DURABLE_PREFIXES:
        if durable.startswith(prefix) and len(durable) > len(prefix):
            return durable[len(prefix) :]
    return None


# ---------------------------------------------------------------- KV buckets

CHECKPOINT_BUCKET = "vebus_checkpoints"
LEASE_BUCKET = "vebus_leases"
CHECKS_BUCKET = "vebus_checks"
ROUTES_BUCKET = "vebus_routes"
RATE_BUCKET = "vebus_dispatch_rate"
DEADLETTER_BUCKET = "vebus_deadletter"

# ---------------------------------------------------------------- control subjects

#: filter, dispatcher and functions replicas answer here with the route set they run
#: (core NATS, every replica answers; not under vebus.routes.>: that is a stream)
ROUTES_STATUS_SUBJECT = "vebus.control.routes.status"
#: `vebus.functions.logs.<function>`: the output of a function's workers, live (core NATS,
#: at-most-once; `vebus fn logs -f`), and where every functions replica answers a request
#: for the lines it keeps (`vebus fn logs`)
FUNCTION_LOGS_PREFIX = "vebus.functions.logs"
FUNCTION_LOGS_SUBJECT = "vebus.control.functions.logs"
#: NATS micro-service discovery (nats.micro): every replica answers
SRV_PING = "$SRV.PING"
SRV_STATS = "$SRV.STATS"
#: `vebus.status.<service>.<instance>`: one replica's status endpoint
STATUS_PREFIX = "vebus.status"
#: JetStream's advisory for a message that reached a consumer's MaxDeliver (+ .<stream>.<consumer>)
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def function_logs_subject(function: str) -> str:
    """`vebus.functions.logs.<function>`: a function's output lines, live."""
    return f"{FUNCTION_LOGS_PREFIX}.{token(function)}"


def micro_service(service: str) -> str:
    """The NATS micro-service name of a vebus service: `vebus-<service>`."""
    return f"{SUBJECT_ROOT}-{service}"


def service_of_micro(name: str) -> str | None:
    """The vebus service of a micro-service name; None for another program's service."""
    prefix = f"{SUBJECT_ROOT}-"
    return name[len(prefix) :] if name.startswith(prefix) and len(name) > len(prefix) else None


#: the queue group the deadletter replicas share the advisories in
DEADLETTER_QUEUE = micro_service("deadletter")


def distribution(service: str) -> str:
    """The Python distribution (wheel) of a service: `vebus-<service>`."""
    return f"{SUBJECT_ROOT}-{service}"


def status_subject(service: str, instance: str) -> str:
    """The status endpoint of one replica."""
    return f"{STATUS_PREFIX}.{token(service)}.{token(instance)}"


# ---------------------------------------------------------------- headers

MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CONTENT_TYPE = "content-type"
#: CloudEvents attributes travel as `ce-<attribute>` headers (binary content mode)
CE_PREFIX = "ce-"
#: the CloudEvents distributed-tracing extension: the context the event was created in
CE_TRACEPARENT = CE_PREFIX + TRACEPARENT
#: the wire-format version of a vebus message, so later versions can change it
WIRE_HEADER = "vebus-wire"
WIRE_VERSION = "1"
#: the collector's position headers on VEBUS_EVENTS: vCenter name, epoch, event key
H_VCENTER = "vebus-vcenter"
H_EPOCH = "vebus-epoch"
H_KEY = "vebus-key"
#: extension set on an event whose data was replaced by a truncation notice
TRUNCATED_EXTENSION = "vebustruncated"
#: extension set on a replayed event: when it was replayed
REPLAY_EXTENSION = "vebusreplay"
#: HTTP headers of a signed request (a webhook sink's `hmac` auth, the webhook source's
#: `hmac` check): `sha256=<hex>`, and the Unix time the signature covers
H_SIGNATURE = "X-Vebus-Signature-256"
H_SIGNED_AT = "X-Vebus-Timestamp"
#: a dead letter's headers: what happened to the event it carries
DLQ_HEADER_PREFIX = "vebus-dlq-"
H_DLQ_ROUTE = DLQ_HEADER_PREFIX + "route"
H_DLQ_SINK = DLQ_HEADER_PREFIX + "sink"
H_DLQ_CODE = DLQ_HEADER_PREFIX + "code"
H_DLQ_ERROR = DLQ_HEADER_PREFIX + "error"
H_DLQ_STATUS = DLQ_HEADER_PREFIX + "status"
H_DLQ_ATTEMPTS = DLQ_HEADER_PREFIX + "attempts"
H_DLQ_EXHAUSTED = DLQ_HEADER_PREFIX + "exhausted"
H_DLQ_FIRST = DLQ_HEADER_PREFIX + "first-attempt"
H_DLQ_LAST = DLQ_HEADER_PREFIX + "last-attempt"
H_DLQ_MSG_ID = DLQ_HEADER_PREFIX + "msg-id"
#: set when the event's body could not be kept: its size in bytes
H_DLQ_OMITTED = DLQ_HEADER_PREFIX + "body-omitted"
#: several lines that explain the error (a function's traceback or the tail of its
#: output), JSON-encoded as one string so that it fits a header
H_DLQ_DETAIL = DLQ_HEADER_PREFIX + "detail"

# ---------------------------------------------------------------- functions

#: the sink kind of a route that delivers to a function (the functions service's routes)
FUNCTION_SINK = "function"
#: extension on a function's reply event: how many functions the chain has passed through
HOPS_EXTENSION = "vebushops"
#: a reply event's `source` is `vebus://functions/<function>`, its default `type`
#: `com.vebus.function.<function>.v0`
FUNCTION_SOURCE_PREFIX = "vebus://functions/"
FUNCTION_TYPE_PREFIX = "com.vebus.function."


def function_reply_msg_id(function: str, cause: str, index: int) -> str:
    """The Nats-Msg-Id of reply `index` of `function` to the message whose own Msg-Id is
    `cause`: the same for every retry of that message, so JetStream stores it once."""
    return f"{FUNCTIONS_SOURCE}:{token(function)}:{cause}:{index}"


# ---------------------------------------------------------------- JetStream API errors

#: a store failure (JSStreamStoreFailedF): among others a subject at max_msgs_per_subject
#: with discard-new-per-subject (a full route: JS_MAX_PER_SUBJECT_TEXT in its description),
#: or a write the disk refused ("no space left on device")
JS_ERR_MAX_MSGS_PER_SUBJECT = 10077
#: ... what its description says for a full route
JS_MAX_PER_SUBJECT_TEXT = "maximum messages per subject"
#: JetStream out of storage: the server's max_file_store (or max_memory_store) is used up
#: ("insufficient resources"), or the account's or stream's storage is
JS_ERR_INSUFFICIENT_RESOURCES = 10023
JS_ERR_STORAGE_EXCEEDED = 10047
JS_ERR_MEMORY_EXCEEDED = 10028
JS_STORAGE_ERRORS = frozenset(
    {JS_ERR_INSUFFICIENT_RESOURCES, JS_ERR_STORAGE_EXCEEDED, JS_ERR_MEMORY_EXCEEDED}
)
#: store-failure descriptions (code 10077) that mean the disk, not the route, is full
JS_NO_SPACE_TEXTS = ("no space left", "insufficient", "maximum bytes")
#: a message delete that failed, e.g. "no message found"
JS_ERR_MSG_DELETE_FAILED = 10057

# ---------------------------------------------------------------- services and ports

SERVICES = ("collector", "filter", "dispatcher", "deadletter", "functions", "console")
#: the services that run routes and report the route set they run (`vebus routes apply`
#: waits for each of their replicas), the filter first
ROUTE_SERVICES = ("filter", "dispatcher", "functions")
#: the services that deliver routes (their replicas report pauses)
DELIVERING_SERVICES = ("dispatcher", "functions")
#: /healthz, /readyz and /metrics, one port per service so they can share a host
HEALTH_PORTS = {
    "collector": 8181,
    "filter": 8182,
    "dispatcher": 8183,
    "deadletter": 8184,
    "functions": 8186,
    "console": 8187,
}
NATS_PORT = 4222
NATS_MONITOR_PORT = 8222
VCSIM_PORT = 8989
#: the collector's webhook source and the deadletter HTTP API
WEBHOOK_PORT = 8280
DEADLETTER_API_PORT = 8085
#: the web console's pages (loopback by default)
CONSOLE_PORT = 8090

# ---------------------------------------------------------------- environment variables

ENV_CONFIG = "VEBUS_CONFIG"
#: the event loop a service runs on: `uvloop` (the default where it is installed) or `asyncio`
ENV_EVENT_LOOP = "VEBUS_EVENT_LOOP"
ENV_HEALTH_HOST = "VEBUS_HEALTH_HOST"
ENV_HEALTH_PORT = "VEBUS_HEALTH_PORT"
ENV_LOG_LEVEL = "VEBUS_LOG_LEVEL"
ENV_LOG_FORMAT = "VEBUS_LOG_FORMAT"
ENV_METRICS_POLL = "VEBUS_METRICS_POLL"
ENV_NATS_URL = "VEBUS_NATS_URL"
ENV_NATS_USER = "VEBUS_NATS_USER"
ENV_NATS_PASSWORD = "VEBUS_NATS_PASSWORD"
ENV_VCSIM = "VEBUS_VCSIM"
#: set in a function worker's environment: the function's name
ENV_FUNCTION = "VEBUS_FUNCTION"
#: the port an HTTP function server must listen on (as Knative sets it)
ENV_PORT = "PORT"
#: the deadletter API's bearer token, as `vebus up` hands it to the deadletter service
#: and the console (`deadletter.api.token: ${VEBUS_DLQ_TOKEN}`)
ENV_DLQ_TOKEN = "VEBUS_DLQ_TOKEN"
#: the console's own sign-in token that `vebus up` generates when none is configured
ENV_CONSOLE_TOKEN = "VEBUS_CONSOLE_TOKEN"
#: host:port the console listens on instead of `console.listen` (a second replica)
ENV_CONSOLE_LISTEN = "VEBUS_CONSOLE_LISTEN"


def service_module(service: str) -> str:
    """The Python module a service runs as: `python -m vebus_<service>`."""
    return f"{SUBJECT_ROOT}_{service}"
