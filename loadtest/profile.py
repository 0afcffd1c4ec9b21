"""Where the filter's and the dispatcher's CPU goes, under the throughput or routes load.

    uv run python -m loadtest.profile [--routes N] [--events N] [--top N]

Runs the throughput scenario's pipeline (N events through the filter and one dispatcher to
the immediate sink, `--routes` routes, each event matching one) with py-spy sampling each
service process from the moment it is ready (`py-spy record --format raw`, idle time left
out: what the process spends CPU on). Prints, per service, the functions with the most
samples of their own ("self") and with them on the stack ("total"), as shares of the
process's samples; writes the collapsed stacks to loadtest/results/profiles/ (open them
with speedscope or flamegraph.pl). py-spy comes from PyPI (`uv pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest.common import RESULTS, print_table
from loadtest.pipeline import Bench, rate_of, routes_yaml


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", str(out),
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each collapsed stack of a py-spy `--format raw` file: its frames (shortened, root
    first) and its sample count."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield [_short(f) for f in stack.split(";")], int(count)


def top(path: Path, n: int) -> list[dict[str, Any]]:
    """The `n` functions with the most self samples, with their total share too."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, k in _stacks(path):
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    return [
        {"function": f, "self_%": 100 * c / samples, "total_%": 100 * total[f] / samples}
        for f, c in own.most_common(n)
    ]


def top_total(path: Path, n: int, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `n` functions of these packages with the most samples on the stack."""
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, k in _stacks(path):
        samples += k
        for f in set(frames):
            if any(p in f for p in prefix):
                total[f] += k
    return [{"function": f, "total_%": 100 * c / samples} for f, c in total.most_common(n)]


def _short(frame: str) -> str:
    """`fn (path/to/pkg/mod.py:12)` as `fn (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    return f"{name} ({'/'.join(parts[-3:])})"


async def profile(workdir: Path, events: int, routes: int) -> dict[str, Path]:
    out_dir = RESULTS / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = {s: out_dir / f"{s}-{routes}routes.txt" for s in ("filter", "dispatcher")}
    spies = []
    async with Bench(workdir) as b:
        b.write_config(routes_yaml(b.nats_url, b.sink.url, routes))
        await b.ensure_streams()
        await b.start("dispatcher")
        spies.append(_spy(b.services["dispatcher"].pid, outs["dispatcher"]))
        await b.inject(0, events, routes)
        await b.start("filter")
        spies.append(_spy(b.services["filter"].pid, outs["filter"]))
        t0 = time.perf_counter()
        await b.wait_sink(events, max(300.0, events / 50), "profile")
        _, recv = b.latencies()
        print(f"{events} events, {routes} route(s): {rate_of(recv):,.0f}/s at the sink "
              f"({time.perf_counter() - t0:.0f} s, under py-spy)")  # fmt: skip
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
    return outs


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--routes", type=int, default=1)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vebus-profile-") as tmp:
        outs = asyncio.run(profile(Path(tmp), a.events, a.routes))
    for service, path in outs.items():
        print_table(f"{service}, {a.routes} route(s): self time", top(path, a.top))
        print_table(
            f"{service}, {a.routes} route(s): vebus functions by total time",
            top_total(path, a.top, ("vebus",)),
        )
        print(f"collapsed stacks: {path}")


if __name__ == "__main__":
    main()
