"""The pure parts of vebus.runtime.telemetry and vebus.runtime.metrics: which exporter the OTEL_*
variables choose, the ack-subject timestamp, the fast metric families' Prometheus exposition,
and the log fields added while a message is handled."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vebus.names import stream_of_subject as stream_of
from vebus.runtime.metrics import Metrics
from vebus.runtime.telemetry import (
    LogContextFilter,
    MessageScope,
    Telemetry,
    _stored_at,
    tracing_configured,
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),  # compose's `${VAR:-}`: off
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, None),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, None),
    ],
)
def test_the_standard_variables_choose_the_exporter(
    env: dict[str, str], expected: str | None
) -> None:
    assert tracing_configured(env) == expected


def test_no_exporter_means_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_TRACES_EXPORTER"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    tel = Telemetry.from_env("filter", "abc", "1.0")
    assert tel.tracer is None
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    observation = tel.publishing("vebus.routes.r", headers, 10)
    assert headers == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    observation.stored()  # counted, with no span to end
    assert tel.metrics.total(tel.metrics.published) == 1


def test_the_ack_subject_says_when_the_message_was_stored() -> None:
    ns = 1_732_550_000_123_456_789
    assert _stored_at(f"$JS.ACK.VEBUS_EVENTS.vebus-filter.1.5.5.{ns}.0") == pytest.approx(ns / 1e9)
    # with a domain and account hash, and the random token at the end
    v2 = f"$JS.ACK.hub.ACCHASH.VEBUS_ROUTES.vebus-dispatch-a.2.9.9.{ns}.3.tok"
    assert _stored_at(v2) == pytest.approx(ns / 1e9)
    assert _stored_at(None) is None
    assert _stored_at("_INBOX.abc") is None
    assert _stored_at("$JS.ACK.S.C.1.5.5.notanumber.0") is None


def test_subjects_name_their_stream_and_route() -> None:
    assert stream_of("vebus.events.vc1.VmPoweredOffEvent") == ("VEBUS_EVENTS", "vc1")
    assert stream_of("vebus.routes.vm-off") == ("VEBUS_ROUTES", "vm-off")
    assert stream_of("vebus.dlq._invalid") == ("VEBUS_DLQ", "_invalid")
    assert stream_of("other.subject") == ("", "")


def test_fast_families_expose_as_prometheus_counters_and_histograms() -> None:
    m = Metrics("dispatcher", "abc", "1.0")
    delivered = m.delivered.labels("vm-off", "webhook")
    delivered.inc()
    delivered.inc()
    seconds = m.sink_seconds.labels("vm-off", "webhook")
    for v in (0.001, 0.003, 0.2, 100.0):  # 0.001 is `le` 0.001: the first bucket
        seconds.observe(v)
    text = generate_latest(m.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    route = (("route", "vm-off"), ("sink", "webhook"))
    assert samples[("vebus_events_delivered_total", route)] == 2
    bucket = "vebus_sink_call_seconds_bucket"
    assert samples[(bucket, tuple(sorted((*route, ("le", "0.001")))))] == 1
    assert samples[(bucket, tuple(sorted((*route, ("le", "0.005")))))] == 2
    assert samples[(bucket, tuple(sorted((*route, ("le", "0.25")))))] == 3
    assert samples[(bucket, tuple(sorted((*route, ("le", "30.0")))))] == 3
    assert samples[(bucket, tuple(sorted((*route, ("le", "+Inf")))))] == 4
    assert samples[("vebus_sink_call_seconds_count", route)] == 4
    assert samples[("vebus_sink_call_seconds_sum", route)] == pytest.approx(100.204)
    assert m.total(m.delivered, route="vm-off") == 2
    assert m.total(m.delivered, route="other") == 0


def test_log_lines_name_the_message_being_handled() -> None:
    from vebus.runtime.telemetry import _SCOPE

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed", None, None)
    f = LogContextFilter("dispatcher", "abc")
    headers = {
        "ce-id": "42",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    scope = MessageScope(headers, "vebus-dispatch-vm-off", "vm-off")
    scope.sink = "webhook"
    token = _SCOPE.set(scope)
    try:
        assert f.filter(record)
    finally:
        _SCOPE.reset(token)
    fields = {k: getattr(record, k) for k in ("service", "instance", "event_id", "route",
                                              "sink", "consumer", "trace_id")}  # fmt: skip
    assert fields == {
        "service": "dispatcher", "instance": "abc", "event_id": "42", "route": "vm-off",
        "sink": "webhook", "consumer": "vebus-dispatch-vm-off",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }  # fmt: skip
    # outside a message: only service and instance
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert f.filter(other)
    assert not hasattr(other, "event_id")
    assert not hasattr(other, "trace_id")
    from pythonjsonlogger.json import JsonFormatter

    line = json.loads(JsonFormatter("%(levelname)s %(message)s").format(record))
    assert line["route"] == "vm-off"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
