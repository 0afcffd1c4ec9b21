"""Prometheus metrics of one vebus service process, served at `/metrics` on its health port.

One `Metrics` (one `CollectorRegistry`) per running service, made by `run_service` and
reached through `vebus.runtime.telemetry`: the shared wrappers (the pull consumer,
`publish`, the sink wrapper) count what passes through them, so no handler counts anything
itself. Gauges that need a NATS round trip (consumer backlog, stream depth) are refreshed
by one background poll (`POLL_INTERVAL`), not per message; a service's own families (the
collector's per-vCenter state) are collectors it registers on `registry` itself.

The families counted per message are `FastCounter` and `FastHistogram`: plain numbers
that the event loop adds to, turned into Prometheus samples only when scraped. The
prometheus-client classes take a lock and, for histograms, scan every bucket on each
observation (about 1 and 3 microseconds): measurable on the filter's hot path.

Every name starts with `vebus_`; docs/observability.md lists them with example queries.
Counters of consumers and streams are per replica: sum them over replicas, and take the
`max` of the backlog gauges (every replica of a consumer reports the same backlog).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "AGE_BUCKETS",
    "DURATION_BUCKETS",
    "FastCounter",
    "FastHistogram",
    "LoopTasks",
    "Metrics",
]

#: seconds an event has been on its way: from milliseconds to a catch-up of hours
AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: seconds of one sink call
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CounterChild:
    """One labelled counter: `inc` is an addition."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    """One labelled histogram: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` the first bound >= value
        self.sum += value


class FastCounter(Collector):
    """A counter family for the event loop (not thread-safe; vebus counts from one loop)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *,
        registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CounterChild()
        return child

    def items(self) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every child."""
        return [(dict(zip(self.labelnames, k, strict=True)), c.value)
                for k, c in list(self._children.items())]  # fmt: skip

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(key, child.value)
        yield family


class FastHistogram(Collector):
    """A histogram family for the event loop (not thread-safe), with fixed `buckets`."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *,
        buckets: Sequence[float], registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        names = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for key, child in list(self._children.items()):
            cumulative, total = [], 0
            for le, count in zip(names, list(child.counts), strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(list(key), cumulative, child.sum)
        yield family


class LoopTasks(Collector):
    """`vebus_asyncio_tasks`: the asyncio tasks alive in the service's event loop, counted
    when scraped. A count that keeps growing under steady load is a task leak (the soak
    test, tests/chaos/test_soak.py, charts it)."""

    NAME = "vebus_asyncio_tasks"
    DOC = "asyncio tasks alive in the process's event loop (a steady count under load)."

    def __init__(self, registry: CollectorRegistry) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop (a unit test): the scraping loop's
            self._loop = None
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.DOC)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.DOC)
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is not None:
            family.add_metric([], float(len(asyncio.all_tasks(loop))))
        yield family


class Metrics:
    """The metric families of one service; label values are bound by the wrappers."""

    def __init__(self, service: str, instance: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        info = Gauge("vebus_info", "This process: 1, with its service, instance and version.",
                     ["service", "instance", "version"], registry=r)  # fmt: skip
        info.labels(service, instance, version).set(1)
        # vebus_process_resident_memory_bytes, _open_fds, _cpu_seconds_total, ... (Linux)
        ProcessCollector(namespace="vebus", registry=r)
        self.tasks = LoopTasks(r)
        self.received = FastCounter(
            "vebus_events_received",
            "Messages fetched from a durable consumer (redeliveries included).",
            ["stream", "consumer", "route"],
            registry=r,
        )
        self.handled = FastCounter(
            "vebus_events_handled",
            "Messages settled by a consumer, by what was done: ack, nak, term, or error "
            "(the handler raised; the message is nak'ed).",
            ["consumer", "route", "outcome"],
            registry=r,
        )
        self.published = FastCounter(
            "vebus_events_published",
            "Messages stored by JetStream (publish acknowledged). route is set on VEBUS_ROUTES "
            "and VEBUS_DLQ, source (the vCenter, webhook or checks) on VEBUS_EVENTS.",
            ["stream", "route", "source"],
            registry=r,
        )
        self.publish_failed = FastCounter(
            "vebus_publish_failures",
            "Publishes JetStream refused or never acknowledged, or too large to send "
            "(reason: route_full, too_large, error).",
            ["stream", "route", "reason"],
            registry=r,
        )
        self.dead_lettered = FastCounter(
            "vebus_events_failed",
            "Events that became dead letters (stored in VEBUS_DLQ), by route, sink and code.",
            ["route", "sink", "code"],
            registry=r,
        )
        self.attempts = FastCounter(
            "vebus_delivery_attempts",
            "Sink calls by outcome: delivered, retryable, permanent, timeout, error.",
            ["route", "sink", "outcome"],
            registry=r,
        )
        self.delivered = FastCounter(
            "vebus_events_delivered",
            "Events the sink confirmed (a 2xx for HTTP; each sink defines its success).",
            ["route", "sink"],
            registry=r,
        )
        self.sink_seconds = FastHistogram(
            "vebus_sink_call_seconds",
            "Duration of one sink call, whatever its outcome.",
            ["route", "sink"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.event_age = FastHistogram(
            "vebus_event_age_seconds",
            "Age of an event (now - its CloudEvent time) when a hop receives it, and "
            "(consumer=delivered) when its sink confirmed it.",
            ["consumer", "route"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.wait = FastHistogram(
            "vebus_consumer_wait_seconds",
            "Time a message spent in its stream before this hop fetched it (since it was "
            "stored: for a route, since the event entered the route).",
            ["consumer", "route"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "vebus_consumer_pending",
            "Messages the consumer has not yet been delivered (num_pending); every replica "
            "reports the same value: take the max.",
            ["stream", "consumer"],
            registry=r,
        )
        self.ack_pending = Gauge(
            "vebus_consumer_ack_pending",
            "Messages delivered and not yet acknowledged (num_ack_pending).",
            ["stream", "consumer"],
            registry=r,
        )
        self.redelivered = Gauge(
            "vebus_consumer_redelivered",
            "Messages delivered more than once and not yet acknowledged (num_redelivered).",
            ["stream", "consumer"],
            registry=r,
        )
        self.stream_messages = Gauge(
            "vebus_stream_messages",
            "Messages in a stream (reported by the deadletter service); "
            'vebus_stream_messages{stream="VEBUS_DLQ"} is the dead-letter depth.',
            ["stream"],
            registry=r,
        )
        self.stream_bytes = Gauge(
            "vebus_stream_bytes", "Bytes in a stream (reported by the deadletter service).",
            ["stream"], registry=r,
        )  # fmt: skip
        self.poll_errors = FastCounter(
            "vebus_metrics_poll_errors",
            "Background polls of consumer or stream state that failed.",
            [],
            registry=r,
        )

    @staticmethod
    def total(counter: FastCounter, **match: str) -> float:
        """The sum of `counter` over the children whose labels include `match`."""
        return sum(
            value
            for labels, value in counter.items()
            if all(labels.get(k) == v for k, v in match.items())
        )
