"""Per-function counts and durations: `/metrics`, /readyz and `vebus fn list`.

Each invocation's outcome (protocol.STATUSES, plus `hop_limit` and `bad_reply`) is counted
and its duration put in a histogram with fixed bounds, so that `vebus fn list` can add up
the replicas' buckets and read p50 and p99 from the sum.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["BOUNDS", "FunctionMetrics", "FunctionStats"]

#: upper bounds (seconds) of the duration histogram's buckets (+Inf after the last)
BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class FunctionStats:
    """One function's invocations in this replica."""

    def __init__(self, name: str, runtime: str) -> None:
        self.name = name
        self.runtime = runtime
        self.outcomes: Counter[str] = Counter()
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.seconds = 0.0
        self.last_error: str | None = None

    def record(self, outcome: str, duration: float | None, error: str | None = None) -> None:
        self.outcomes[outcome] += 1
        if duration is not None:
            self.buckets[bisect.bisect_left(BOUNDS, duration)] += 1
            self.seconds += duration
        if error:
            self.last_error = error[:300]

    @property
    def invocations(self) -> int:
        return sum(self.outcomes.values())

    def snapshot(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """What /readyz and `vebus status` show (and `vebus fn list` reads)."""
        return {
            "runtime": self.runtime,
            "invocations": self.invocations,
            "outcomes": dict(self.outcomes),
            "errors": self.invocations - self.outcomes.get("done", 0),
            "buckets": list(self.buckets),
            "bounds": list(BOUNDS),
            "last_error": self.last_error,
            **state,
        }


class FunctionMetrics(Collector):
    """vebus_function_* families, read at scrape time from each function's stats."""

    def __init__(
        self,
        stats: Mapping[str, FunctionStats],
        state: Callable[[str], Mapping[str, Any]],
        dropped: Callable[[str], int],
    ) -> None:
        self._stats = stats
        self._state = state
        self._dropped = dropped

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        invocations = CounterMetricFamily(
            "vebus_function_invocations",
            "Invocations of a function in this replica, by how they ended.",
            labels=["function", "outcome"],
        )
        duration = HistogramMetricFamily(
            "vebus_function_duration_seconds",
            "Time from an invocation's start in a worker process to its end.",
            labels=["function"],
        )
        restarts = CounterMetricFamily(
            "vebus_function_restarts",
            "Worker processes (or servers) of a function started again after one ended.",
            labels=["function"],
        )
        busy = GaugeMetricFamily(
            "vebus_function_busy", "Invocations of a function running now.", labels=["function"]
        )
        dropped = CounterMetricFamily(
            "vebus_function_output_dropped_lines",
            "Lines of a function's output dropped: over the rate the service passes on.",
            labels=["function"],
        )
        for name, s in self._stats.items():
            for outcome, n in s.outcomes.items():
                invocations.add_metric([name, outcome], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*BOUNDS, float("inf")), s.buckets, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            duration.add_metric([name], buckets, s.seconds)
            state = self._state(name)
            restarts.add_metric([name], int(state.get("restarts") or 0))
            busy.add_metric([name], int(state.get("busy") or 0))
            dropped.add_metric([name], self._dropped(name))
        yield from (invocations, duration, restarts, busy, dropped)
