"""What every benchmark shares: timing helpers, percentiles, the results table and file.

Every figure is reported next to a baseline measured in the same run (the machines are
shared and noisy): compare ratios, not absolute numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of a list of latencies (seconds)."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "n": float(len(values)),
    }


class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_table(title: str, rows: Sequence[dict[str, Any]]) -> None:
    """A plain aligned table on stdout."""
    print(f"\n== {title}")
    if not rows:
        print("(no rows)")
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write `loadtest/results/<name>.json` with the machine and time of the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": name,
        "when": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path
