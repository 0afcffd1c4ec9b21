"""Functions against a webhook route: events/s and CPU per event of a no-op Python function
and of a no-op `command` function, next to a webhook route measured in the same run.

Each target gets the same backlog on a route of its own: the route's consumer is created
and paused, the backlog published to `vebus.routes.<route>`, the delivering service
(dispatcher or functions) started, and then the consumer resumed. The consumer is read
every 20 ms: the rate is the events acknowledged between the first acknowledgement and the
last over that time (a paused consumer's first pull requests wait out their expiry, which
is not the service's throughput); CPU is the delivering service's (with its live worker
processes and the reaped commands, /proc utime + stime + cutime + cstime) over the same
interval. The webhook's sink answers at once in a process of its own (loadtest.dispatcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

from loadtest.dispatcher import sample_event
from loadtest.pipeline import Bench
from vebus import names
from vebus.bus.cloudevent import to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.streams import ensure_consumer, ensure_streams
from vebus.config import load_config
from vebus.delivery.consumers import route_consumer_config

__all__ = ["functions"]

ROUTE = "load"
#: the no-op Python function, and its file
NOOP = "def handle(event, ctx):\n    return None\n"
#: what each target's config says after `routes:`/`functions:`
TARGETS = {
    "webhook route (dispatcher)": ("dispatcher", "webhook"),
    "python function, no-op": ("functions", "python"),
    "command function, no-op (sh)": ("functions", "command"),
}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children, and its live children."""
    tck = os.sysconf("SC_CLK_TCK")

    def fields(p: int | str) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    own = fields(pid)
    total = sum(int(v) for v in own[11:15])  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        with contextlib.suppress(OSError, IndexError):
            f = fields(entry.name)
            if int(f[1]) == pid:  # ppid
                total += int(f[11]) + int(f[12])
    return total / tck


def _config(b: Bench, kind: str, workdir: Path) -> str:
    head = f"nats: {{url: '{b.nats_url}'}}\nstreams: {{route_max_msgs: 2000000}}\n"
    if kind == "webhook":
        return head + (
            f"routes:\n  - name: {ROUTE}\n    sink: {{kind: webhook, url: '{b.sink.url}'}}\n"
        )
    (workdir / "noop.py").write_text(NOOP)
    runtime = (
        "python: noop.py:handle\n    workers: 2"
        if kind == "python"
        else "command: [sh, -c, 'cat > /dev/null']\n    workers: 4"
    )
    return head + (
        f"functions:\n  - name: noop\n    {runtime}\n"
        f"routes:\n  - name: {ROUTE}\n    sink: {{kind: function, function: noop}}\n"
    )


async def _one(workdir: Path, label: str, count: int) -> dict[str, Any]:
    service, kind = TARGETS[label]
    async with Bench(workdir) as b:
        b.write_config(_config(b, kind, workdir))
        cfg = load_config(b.config)
        js = b.js
        await ensure_streams(js, cfg.stream_settings())
        durable = (names.dispatcher_durable if service == "dispatcher" else
                   names.functions_durable)(ROUTE)  # fmt: skip
        await ensure_consumer(
            js, names.ROUTES_STREAM, route_consumer_config(cfg.route(ROUTE), durable)
        )
        await js.pause_consumer(names.ROUTES_STREAM, durable, "2999-01-01T00:00:00Z")
        batch = []
        for n in range(count):
            ev = sample_event(n)
            headers = to_headers(ev, {names.MSG_ID: f"{kind}:{n}"})
            batch.append(OutgoingMessage(names.route_subject(ROUTE), ev.data, headers))
            if len(batch) == 500:
                await publish_all(js, batch)
                batch = []
        if batch:
            await publish_all(js, batch)
        proc = await b.start(service)
        await asyncio.sleep(1.0)  # the functions' workers settle
        await js.resume_consumer(names.ROUTES_STREAM, durable)
        first: tuple[float, int, float] | None = None
        deadline = time.monotonic() + max(120.0, count / 20)
        while True:
            info = await js.consumer_info(names.ROUTES_STREAM, durable)
            acked = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            left = (info.num_pending or 0) + (info.num_ack_pending or 0)
            now = time.monotonic()
            if first is None and left < count:
                first = (now, count - left, tree_cpu(proc.pid))
            if left == 0 and acked:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: {left} of {count} still waiting")
            await asyncio.sleep(0.02)
        assert first is not None
        took = now - first[0]
        done = count - first[1]
        cpu = tree_cpu(proc.pid) - first[2]
        return {
            "target": label,
            "events": count,
            "events_per_s": done / took if took > 0 else float("nan"),
            "cpu_us_per_event": cpu / done * 1e6 if done else float("nan"),
            "settings": await b.settings(),
        }


async def functions(workdir: Path, short: bool) -> dict[str, Any]:
    """The webhook route, the no-op Python function and the no-op command, alternated
    (the machine's load drifts); medians over the rounds."""
    n = 600 if short else 10000
    rounds = 1 if short else 3
    runs: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for i in range(rounds):
        for label, (_, kind) in TARGETS.items():
            count = n if kind != "command" else max(100, n // 10)
            run = await _one(workdir / f"{kind}{i}", label, count)
            settings = run.pop("settings")
            runs.append({"round": i + 1, **run})
    med = {
        label: {
            "events_per_s": statistics.median(
                r["events_per_s"] for r in runs if r["target"] == label
            ),
            "cpu_us_per_event": statistics.median(
                r["cpu_us_per_event"] for r in runs if r["target"] == label
            ),
        }
        for label in TARGETS
    }
    hook = med["webhook route (dispatcher)"]["events_per_s"]
    rows = [
        {
            "target": label,
            "events/s": m["events_per_s"],
            "x webhook": m["events_per_s"] / hook,
            "cpu_us/ev": m["cpu_us_per_event"],
        }
        for label, m in med.items()
    ]
    py = med["python function, no-op"]["events_per_s"] / hook
    return {
        "events": n,
        "runs": runs,
        "rows": rows,
        "medians": med,
        "python_vs_webhook": py,
        "chart": {
            "series": {"events/s (median)": {k: v["events_per_s"] for k, v in med.items()}},
            "ylabel": "events/s",
        },
        "goal": {
            "goal": "a no-op Python function >= 0.5 of the webhook route's rate",
            "met": py >= 0.5,
            "figure": f"{med['python function, no-op']['events_per_s']:,.0f} events/s, "
            f"{py:.2f} of the webhook route ({hook:,.0f}/s); command: "
            f"{med['command function, no-op (sh)']['events_per_s']:,.0f} events/s",
        },
        "settings": settings,
    }
