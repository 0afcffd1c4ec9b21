"""What every benchmark shares: timing helpers, percentiles, the results table and file.

Every figure is reported next to a baseline measured in the same run (the machines are
shared and noisy): compare ratios, not absolute numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg

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


def machine() -> dict[str, Any]:
    """The machine and moment of a run: nproc, load average, date, git commit."""
    import os
    import subprocess

    def git(*args: str) -> str:
        cwd = RESULTS.parent.parent
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=cwd)
        return out.stdout.strip()

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


async def jetstream_settings(nc: Any, monitor_port: int | None) -> dict[str, Any]:
    """The JetStream storage and sync settings a run used: server version, the server's
    JetStream config (store, sync_interval) from /varz, and the vebus streams' configs."""
    import urllib.request

    version = nc.connected_server_version
    out: dict[str, Any] = {"server_version": str(version) if version else None}
    if monitor_port:

        def get() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as r:
                return json.loads(r.read())

        import asyncio

        varz = await asyncio.to_thread(get)
        out["jetstream_config"] = varz.get("jetstream", {}).get("config", {})
        out["sync_interval"] = out["jetstream_config"].get("sync_interval", "default (2m)")
        out["sync_always"] = out["jetstream_config"].get("sync_always", False)
    js = nc.jetstream()
    streams = {}
    for name in ("VEBUS_EVENTS", "VEBUS_ROUTES"):
        try:
            info = await js.stream_info(name)
        except Exception:  # a scenario may not create every stream
            continue
        c = info.config
        streams[name] = {
            "storage": _enum(c.storage),
            "retention": _enum(c.retention),
            "replicas": c.num_replicas,
            "max_msgs_per_subject": c.max_msgs_per_subject,
            "discard": _enum(c.discard),
            "duplicate_window_s": c.duplicate_window,
            "compression": str(getattr(c, "compression", None)),
        }
    out["streams"] = streams
    return out


def _enum(value: Any) -> str:
    """An enum's value, or the string nats-py left it as."""
    return str(getattr(value, "value", value))


def chart(name: str, title: str, series: dict[str, dict[str, float]], ylabel: str) -> Path:
    """A grouped bar chart, `loadtest/results/<name>.png`: one group per x label, one bar
    per series (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for values in series.values():
        labels += [k for k in values if k not in labels]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    width = 0.8 / max(1, len(series))
    for i, (who, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [values.get(k, 0.0) for k in labels], width, label=who)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


class BoundedFetch:
    """The bare loops' consume side: fetch up to `batch` messages at a time from a pull
    subscription, at most `limit` being handled at once, each in a task of its own, until
    `count` are done. A handler calls `release(done=True)` once it acked its message
    (`done=False`: the message was not handled and will come back)."""

    def __init__(self, limit: int, count: int) -> None:
        self.limit = limit
        self.count = count
        self.held = 0
        self.done = 0
        self.room = asyncio.Event()
        self.room.set()
        self.finished = asyncio.Event()

    def release(self, *, done: bool = True) -> None:
        self.held -= 1
        if done:
            self.done += 1
        self.room.set()
        if self.done == self.count:
            self.finished.set()

    async def run(self, psub: Any, handle: Callable[[Msg], Awaitable[None]], batch: int) -> None:
        """Fetch and hand out messages until `count` are done; then unsubscribe."""
        tasks: set[asyncio.Task[None]] = set()
        while not self.finished.is_set():
            await self.room.wait()
            try:
                msgs = await psub.fetch(min(batch, self.limit - self.held), timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                self.held += 1
                if self.held >= self.limit:
                    self.room.clear()
                task = asyncio.create_task(handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        with contextlib.suppress(nats.errors.Error):
            await psub.unsubscribe()
