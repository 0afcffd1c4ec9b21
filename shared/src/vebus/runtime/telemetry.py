"""Tracing, metrics and log context for one service, applied by the shared wrappers.

`run_service` makes one `Telemetry` per service process and makes it `current()` for
everything the service body runs (a context variable, so tasks inherit it and two services
in one test process do not share it); it is also the wire's observer (vebus.bus.observe).
The wrappers use it, never the handlers (STYLE.md, habit 8): `PullWorker` observes each
message it hands to a handler (a CONSUMER span, received/handled counters, wait and age
histograms, the log scope), `publish` each message it stores (a PRODUCER span whose W3C
`traceparent` goes into the NATS headers, the published counter), the sink wrapper of the
delivering services each sink call (a CLIENT span).

One trace per event: the collector's publish starts it and also writes it into the event
as the CloudEvents distributed-tracing extension (`ce-traceparent`, the creation context,
never changed afterwards); each later hop continues the trace from the `traceparent`
header and replaces that header with its own span, and the dispatcher sends its CLIENT
span as the HTTP `traceparent` header, besides `ce-traceparent` from the event.

The exporter is chosen by the standard variables: OTEL_TRACES_EXPORTER (`otlp`, `console`,
`none`), OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (OTLP over HTTP,
protobuf), OTEL_SDK_DISABLED, the OTEL_BSP_* batch settings. With no exporter there is no
SDK provider at all: no span is made, the `traceparent` a message came with is passed on
unchanged, and the cost is a `None` check.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vebus import names
from vebus.bus import observe
from vebus.errors import PublishError
from vebus.runtime.jshealth import PublishHealth
from vebus.runtime.metrics import Metrics

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "ConsumerObserver",
    "LogContextFilter",
    "MessageScope",
    "Telemetry",
    "current",
    "event_age",
    "message_scope",
    "record_error",
    "tracing_configured",
]

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
#: the CloudEvents attributes spans and histograms read, as NATS headers
_CE_ID, _CE_TYPE, _CE_SOURCE, _CE_TIME = (
    names.CE_PREFIX + attribute for attribute in ("id", "type", "source", "time")
)
_DLQ_SUBJECT_START = names.DLQ_PREFIX + "."
_CURRENT: ContextVar[Telemetry | None] = ContextVar("vebus_telemetry", default=None)
_SCOPE: ContextVar[MessageScope | None] = ContextVar("vebus_message_scope", default=None)
#: publish counters kept per subject; a cache, cleared when it grows past this
_SUBJECT_CACHE_MAX = 4096


def current() -> Telemetry | None:
    """The Telemetry of the service running this code, None outside a service."""
    return _CURRENT.get()


def message_scope() -> MessageScope | None:
    """The message the current task is handling (for log lines), if any."""
    return _SCOPE.get()


def tracing_configured(env: Mapping[str, str] | None = None) -> str | None:
    """The span exporter the OTEL_* variables ask for (`otlp`, `console`), or None."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if names:
        if "otlp" in names:
            return "otlp"
        if "console" in names:
            return "console"
        return None  # "none", or one this build does not have (logged by from_env)
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def record_error(span: Span, error: BaseException, description: str | None = None) -> None:
    """Mark `span` failed by `error`."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, description or type(error).__name__))


def _trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    if traceparent and len(traceparent) >= 55 and traceparent[2] == "-":
        return traceparent[3:35]
    return None


def event_age(ce_time: str) -> float | None:
    """Seconds since a CloudEvent `time` (now), None when it does not parse."""
    return _age(ce_time, time.time())


def _stored_at(reply: str | None) -> float | None:
    """When JetStream stored a message, from its ack subject (what `msg.metadata` parses,
    without building the whole Metadata: the filter's handler never needs it).

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`, or with
    `<domain>.<account hash>` after ACK and a random token at the end (12 tokens or more).
    """
    if not reply:
        return None
    try:
        dots = reply.count(".")
        if dots == 8:
            return int(reply.rsplit(".", 2)[1]) / 1e9
        if dots >= 11:
            return int(reply.split(".")[9]) / 1e9
    except ValueError:
        pass
    return None


def _age(ce_time: str, now: float) -> float | None:
    """Seconds since a CloudEvent `time`, None when it does not parse."""
    try:
        t = dt.datetime.fromisoformat(ce_time)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return max(0.0, now - t.timestamp())


class MessageScope:
    """What a log line written while handling a message says about it."""

    __slots__ = ("consumer", "headers", "route", "sink")

    def __init__(self, headers: Mapping[str, str], consumer: str, route: str) -> None:
        self.headers = headers
        self.consumer = consumer
        self.route = route
        self.sink = ""

    @property
    def event_id(self) -> str | None:
        return self.headers.get(names.CE_PREFIX + "id")

    @property
    def trace_id(self) -> str | None:
        return _trace_id_of(self.headers.get(names.TRACEPARENT))


class Telemetry:
    """Tracer (or None) and metrics of one service; `current()` inside its body."""

    def __init__(
        self,
        service: str,
        instance: str,
        version: str,
        *,
        provider: TracerProvider | None = None,
    ) -> None:
        self.service = service
        self.instance = instance
        self.metrics = Metrics(service, instance, version)
        self._provider = provider
        self.tracer: Tracer | None = provider.get_tracer("vebus", version) if provider else None
        #: (stream, durable) of every consumer a PullWorker runs here, for the backlog poll
        self.consumers: Counter[tuple[str, str]] = Counter()
        self._published: dict[str, Any] = {}
        #: the streams whose publishes keep failing (/readyz, `vebus status`)
        self.publish_health = PublishHealth()

    @classmethod
    def from_env(cls, service: str, instance: str, version: str) -> Telemetry:
        """Telemetry with the span exporter the OTEL_* variables choose (none: no SDK)."""
        exporter_name = tracing_configured()
        wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if exporter_name is None and wanted not in ("", "none"):
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console): no traces",
                        wanted)  # fmt: skip
        if exporter_name is None:
            return cls(service, instance, version)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        if protocol and protocol != "http/protobuf":
            log.warning("OTLP protocol %r is not supported: sending OTLP over HTTP (protobuf)",
                        protocol)  # fmt: skip
        exporter: SpanExporter
        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_* variables
        resource = Resource.create(
            {
                "service.name": names.micro_service(service),
                "service.namespace": "vebus",
                "service.instance.id": instance,
                "service.version": version,
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing: spans of vebus-%s exported (%s)", service, exporter_name)
        return cls(service, instance, version, provider=provider)

    def activate(self) -> tuple[Token[Telemetry | None], Token[Any]]:
        """Make this the `current()` telemetry, and the wire's observer, of this task and
        the tasks it starts."""
        return _CURRENT.set(self), observe.use(self)

    @staticmethod
    def deactivate(tokens: tuple[Token[Telemetry | None], Token[Any]]) -> None:
        _CURRENT.reset(tokens[0])
        observe.reset(tokens[1])

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Export the spans still queued (graceful shutdown); blocks, up to `timeout_ms`."""
        if self._provider is not None:
            self._provider.force_flush(timeout_ms)
            self._provider.shutdown()

    # -- producing ---------------------------------------------------------------------

    def publishing(
        self, subject: str, headers: MutableMapping[str, str], body_size: int
    ) -> observe.PublishObservation:
        """One publish starts (vebus.bus.observe): its PRODUCER span, when tracing, writes
        its traceparent into `headers`; the observation counts what becomes of it."""
        span = self._start_producer(subject, headers, body_size) if self.tracer else None
        if span is None and not subject.startswith(_DLQ_SUBJECT_START):
            # the hot path: no span, and a counter child kept per subject
            counted = self._published.get(subject)
            if counted is None:
                if len(self._published) > _SUBJECT_CACHE_MAX:
                    self._published.clear()
                counted = self._published[subject] = _Publishing(self, subject, headers, None)
            return counted
        return _Publishing(self, subject, headers, span)

    def _start_producer(
        self, subject: str, headers: MutableMapping[str, str], body_size: int
    ) -> Span | None:
        """Start the PRODUCER span of one publish and write its traceparent into `headers`.

        Its parent is the current span (the message being handled), else the traceparent
        the headers came with (a replay, a webhook event), else none: a new trace. A new
        event on VEBUS_EVENTS also gets the span as its `ce-traceparent` extension.
        """
        tracer = self.tracer
        if tracer is None:
            return None
        stream, name = names.stream_of_subject(subject)
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = _PROPAGATOR.extract(headers)
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": subject,
            "messaging.message.body.size": body_size,
        }
        _event_attributes(attributes, headers)
        if stream in (names.ROUTES_STREAM, names.DLQ_STREAM):
            attributes["vebus.route"] = name
        span = tracer.start_span(
            f"send {stream or subject}", context=parent, kind=SpanKind.PRODUCER,
            attributes=attributes,
        )  # fmt: skip
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        if stream == names.EVENTS_STREAM and names.CE_TRACEPARENT not in headers:
            headers[names.CE_TRACEPARENT] = headers[names.TRACEPARENT]
        return span

    def _published_counter(self, subject: str) -> Any:
        """The published counter's child for `subject` (none for a KV write: observed for
        the service's readiness, not an event)."""
        if subject.startswith(names.KV_SUBJECT_PREFIX):
            return _NOT_COUNTED
        stream, name = names.stream_of_subject(subject)
        if stream == names.EVENTS_STREAM:
            return self.metrics.published.labels(stream, "", name)
        return self.metrics.published.labels(stream or "other", name, "")

    def _dead_lettered(self, headers: Mapping[str, str]) -> None:
        self.metrics.dead_lettered.labels(
            headers.get(names.H_DLQ_ROUTE, ""),
            headers.get(names.H_DLQ_SINK, ""),
            headers.get(names.H_DLQ_CODE, ""),
        ).inc()

    def _publish_failed(self, subject: str, reason: str) -> None:
        """Count one publish that was refused or never acknowledged."""
        stream, name = names.stream_of_subject(subject)
        if not stream:  # a KV write: its bucket's stream; any other subject: "other"
            kv = subject.startswith(names.KV_SUBJECT_PREFIX)
            stream = names.stream_name_of(subject) if kv else "other"
        self.metrics.publish_failed.labels(stream, name, reason).inc()

    # -- consuming ---------------------------------------------------------------------

    def consumer(self, stream: str, durable: str) -> ConsumerObserver:
        """The observer a PullWorker of `durable` on `stream` reports each message to."""
        self.consumers[stream, durable] += 1
        return ConsumerObserver(self, stream, durable)

    def consumer_closed(self, stream: str, durable: str) -> None:
        """A worker stopped following `durable`: once none does, it is no longer polled."""
        key = (stream, durable)
        self.consumers[key] -= 1
        if self.consumers[key] <= 0:
            del self.consumers[key]
            self.drop_backlog(stream, durable)

    def drop_backlog(self, stream: str, durable: str) -> None:
        """Stop reporting the backlog gauges of `durable` (until the next poll finds it)."""
        m = self.metrics
        for gauge in (m.pending, m.ack_pending, m.redelivered):
            with contextlib.suppress(KeyError):
                gauge.remove(stream, durable)

    # -- calling out (sinks) -----------------------------------------------------------

    def start_client(
        self, name: str, attributes: dict[str, Any], headers: MutableMapping[str, str]
    ) -> Span | None:
        """Start a CLIENT span (a sink call) under the current one; its traceparent replaces
        the one in `headers` (the copy the sink sends on)."""
        if self.tracer is None:
            return None
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        headers.pop(names.TRACESTATE, None)
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        return span


def _event_attributes(attributes: dict[str, Any], headers: Mapping[str, str]) -> None:
    """The CloudEvents and message-id attributes of a span, from a message's headers."""
    if msg_id := headers.get(names.MSG_ID):
        attributes["messaging.message.id"] = msg_id
    if ce_id := headers.get(_CE_ID):
        attributes["cloudevents.event_id"] = ce_id
    if ce_type := headers.get(_CE_TYPE):
        attributes["cloudevents.event_type"] = ce_type
    if ce_source := headers.get(_CE_SOURCE):
        attributes["cloudevents.event_source"] = ce_source


class _NotCounted:
    """A counter child that counts nothing."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        pass


_NOT_COUNTED = _NotCounted()


class _Publishing:
    """One observed publish (or, without a span, every publish to one subject)."""

    __slots__ = ("_counter", "_headers", "_span", "_subject", "_tel")

    def __init__(
        self, tel: Telemetry, subject: str, headers: Mapping[str, str], span: Span | None
    ) -> None:
        self._tel, self._subject, self._span = tel, subject, span
        self._headers = headers
        self._counter = tel._published_counter(subject)

    def stored(self) -> None:
        self._counter.inc()
        self._tel.publish_health.stored(self._subject)
        if self._subject.startswith(_DLQ_SUBJECT_START):
            self._tel._dead_lettered(self._headers)
        if self._span is not None:
            self._span.end()

    def failed(self, error: BaseException, reason: str) -> None:
        self._tel._publish_failed(self._subject, reason)
        if isinstance(error, PublishError):  # not a full route, not a too-large message
            self._tel.publish_health.failed(self._subject, error)
        if self._span is not None:
            record_error(self._span, error)
            self._span.end()

    def abandoned(self) -> None:
        if self._span is not None:
            self._span.end()


class _Handling:
    """One message being handled: its span (if traced), context token and log scope."""

    __slots__ = ("scope_token", "span", "token")

    def __init__(
        self,
        span: Span | None,
        token: Token[otel_context.Context] | None,
        scope_token: Token[MessageScope | None],
    ) -> None:
        self.span, self.token, self.scope_token = span, token, scope_token


class ConsumerObserver:
    """Observes the messages of one durable consumer: counters, histograms, a CONSUMER span."""

    def __init__(self, telemetry: Telemetry, stream: str, durable: str) -> None:
        m = telemetry.metrics
        self._telemetry = telemetry
        self.stream, self.durable = stream, durable
        self.route = names.route_of_durable(durable) or ""
        self._tracer = telemetry.tracer
        self._received = m.received.labels(stream, durable, self.route)
        self._outcomes = {
            o: m.handled.labels(durable, self.route, o) for o in ("ack", "nak", "term", "error")
        }
        self._wait = m.wait.labels(durable, self.route)
        self._age = m.event_age.labels(durable, self.route)
        self._name = f"process {stream}"

    def begin(self, msg: Msg) -> _Handling:
        """Count and time `msg`; start its span and log scope in the current task."""
        self._received.inc()
        headers = msg.headers or {}
        now = time.time()
        if (stored := _stored_at(msg.reply)) is not None:
            self._wait.observe(max(0.0, now - stored))
        if (ce_time := headers.get(_CE_TIME)) and (age := _age(ce_time, now)) is not None:
            self._age.observe(age)
        scope_token = _SCOPE.set(MessageScope(headers, self.durable, self.route))
        if self._tracer is None:
            return _Handling(None, None, scope_token)
        metadata = msg.metadata
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": self.durable,
            "messaging.destination.subscription.name": self.durable,
            "messaging.message.body.size": len(msg.data),
            "messaging.nats.stream": self.stream,
            "messaging.nats.stream_sequence": metadata.sequence.stream,
            "messaging.nats.delivery_count": metadata.num_delivered,
        }
        _event_attributes(attributes, headers)
        if self.route:
            attributes["vebus.route"] = self.route
        span = self._tracer.start_span(
            self._name, context=_PROPAGATOR.extract(headers), kind=SpanKind.CONSUMER,
            attributes=attributes,
        )  # fmt: skip
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Handling(span, token, scope_token)

    def end(self, handling: _Handling, outcome: str, error: BaseException | None = None) -> None:
        """Count the outcome (ack, nak, term, error), end the span, leave the scope."""
        self._outcomes[outcome].inc()
        span = handling.span
        if span is not None:
            span.set_attribute("vebus.outcome", outcome)
            if error is not None:
                record_error(span, error)
            span.end()
            if handling.token is not None:
                otel_context.detach(handling.token)
        _SCOPE.reset(handling.scope_token)

    def close(self) -> None:
        """The worker stopped following the consumer (the poll stops once none does)."""
        self._telemetry.consumer_closed(self.stream, self.durable)


class LogContextFilter(logging.Filter):
    """Adds service, instance and, while a message is handled, its event id, route, sink,
    consumer and trace id to every record (fields of the JSON log lines).

    A field passed with `extra=` wins. The trace id is the current span's, else the one in
    the message's `traceparent` (tracing off, the context still propagated).
    """

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service, self.instance = service, instance

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        d.setdefault("service", self.service)
        d.setdefault("instance", self.instance)
        scope = _SCOPE.get()
        if scope is not None:
            if (event_id := scope.event_id) is not None:
                d.setdefault("event_id", event_id)
            if scope.route:
                d.setdefault("route", scope.route)
            if scope.sink:
                d.setdefault("sink", scope.sink)
            d.setdefault("consumer", scope.consumer)
        if "trace_id" not in d:
            sc = trace.get_current_span().get_span_context()
            if sc.is_valid:
                d["trace_id"] = format(sc.trace_id, "032x")
                d.setdefault("span_id", format(sc.span_id, "016x"))
            elif scope is not None and (trace_id := scope.trace_id):
                d["trace_id"] = trace_id
        return True
