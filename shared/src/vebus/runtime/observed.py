"""The one place sink calls are observed: a CLIENT span, attempt counters, call duration.

A delivering service wraps every sink (a dispatcher sink, a function) in `ObservedSink`
when it runs inside a service (see `vebus.runtime.telemetry`), so no sink measures or
traces anything itself. The span is a
child of the dispatcher's CONSUMER span; its W3C `traceparent` replaces the one in the
headers the sink is given, so HTTP sinks send it as their `traceparent` header, while the
event keeps the collector's creation context as its `ce-traceparent` extension.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from vebus.bus.cloudevent import CloudEvent
from vebus.delivery.sink import Sink
from vebus.errors import DeliveryError
from vebus.runtime import telemetry

__all__ = ["OUTCOMES", "ObservedSink"]

#: the `outcome` label of vebus_delivery_attempts_total
OUTCOMES = ("delivered", "retryable", "permanent", "timeout", "error")


class ObservedSink:
    """A Sink that reports each call of the sink it wraps to the service's telemetry."""

    def __init__(self, sink: Sink, route: str, tel: telemetry.Telemetry) -> None:
        self._sink = sink
        self._route = route
        self._tracer = tel.tracer
        self._tel = tel
        m = tel.metrics
        kind = sink.kind
        self._attempts = {o: m.attempts.labels(route, kind, o) for o in OUTCOMES}
        self._delivered = m.delivered.labels(route, kind)
        self._seconds = m.sink_seconds.labels(route, kind)
        self._age = m.event_age.labels("delivered", route)
        self._span_name = f"deliver {kind}"

    @property
    def kind(self) -> str:
        return self._sink.kind

    @property
    def wrapped(self) -> Sink:
        """The sink this one observes."""
        return self._sink

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        if (scope := telemetry.message_scope()) is not None:
            scope.sink = self._sink.kind  # for the log lines about this message
        span = None
        if self._tracer is not None:
            attributes: dict[str, Any] = {
                "vebus.route": self._route,
                "vebus.sink": self._sink.kind,
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
                "cloudevents.event_source": event.source,
            }
            headers = dict(headers)
            span = self._tel.start_client(self._span_name, attributes, headers)
        outcome = "error"
        started = time.perf_counter()
        try:
            await self._sink.deliver(event, headers)
            outcome = "delivered"
        except DeliveryError as e:
            outcome = "retryable" if e.retryable else "permanent"
            if span is not None:
                span.set_attribute("vebus.error_code", str(e.code))
                if e.status is not None:
                    span.set_attribute("http.response.status_code", e.status)
                telemetry.record_error(span, e, f"{e.code}: {e}")
            raise
        except (TimeoutError, asyncio.CancelledError) as e:
            outcome = "timeout"  # the route's timeout cancelled the call
            if span is not None:
                telemetry.record_error(span, e, "TIMEOUT")
            raise
        except Exception as e:
            if span is not None:
                telemetry.record_error(span, e)
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)
            self._attempts[outcome].inc()
            if outcome == "delivered":
                self._delivered.inc()
                if event.time and (age := telemetry.event_age(event.time)) is not None:
                    self._age.observe(age)
            if span is not None:
                span.set_attribute("vebus.outcome", outcome)
                span.end()

    async def close(self) -> None:
        await self._sink.close()
