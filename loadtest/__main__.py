"""The benchmark runner: `uv run python -m loadtest [SCENARIO ...] [--short]` (`make bench`).

Scenarios: latency, throughput, scaleout, backlog, routes, burst, functions, sync (all by
default). Each prints its table and writes `loadtest/results/<scenario>.json` and `.png`
(`--short`: the seconds-long form, `<scenario>-short.*`, git-ignored), with the machine
(nproc, load average), date, git commit and the JetStream storage and sync settings it ran
with. Every figure sits next
to a baseline measured in the same run: compare ratios across machines, not numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from loadtest.common import chart, machine, print_table, write_results
from loadtest.scenarios import BACKLOG, SCENARIOS


async def run(names: list[str], short: bool, keep: Path | None) -> int:
    failed: list[str] = []
    goals: list[dict[str, Any]] = []
    for name in names:
        suffix = "-short" if short else ""
        started = time.perf_counter()
        env = machine()
        try:
            with tempfile.TemporaryDirectory(prefix=f"vebus-bench-{name}-") as tmp:
                workdir = (keep / name) if keep else Path(tmp)
                workdir.mkdir(parents=True, exist_ok=True)
                result = await SCENARIOS[name](workdir, short)
        except Exception:  # report the scenario that broke, run the others
            traceback.print_exc()
            print(f"\n!! scenario {name} failed", flush=True)
            failed.append(name)
            continue
        took = time.perf_counter() - started
        print_table(f"{name}{' (short)' if short else ''}", result["rows"])
        goal = result["goal"]
        print(f"goal: {goal['goal']}: {'met' if goal['met'] else 'NOT met'} ({goal['figure']})")
        goals.append({"scenario": name, **goal})
        c = result.pop("chart")
        png = chart(
            f"{name}{suffix}", f"{name}{' (short)' if short else ''}", c["series"], c["ylabel"]
        )
        path = write_results(
            f"{name}{suffix}",
            {"short": short, "seconds": took, "machine": env, **result, "chart_data": c},
        )
        print(f"written: {path.name}, {png.name} ({took:.0f} s)", flush=True)
    if goals:
        print_table(
            "goals",
            [{"scenario": g["scenario"], "met": g["met"], "figure": g["figure"]} for g in goals],
        )
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--short", action="store_true", help="the seconds-long CI form")
    p.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    p.add_argument(
        "--backlog",
        type=int,
        metavar="N",
        help=f"events queued in the full backlog scenario (default {BACKLOG['full']:,})",
    )
    a = p.parse_args(argv)
    unknown = [s for s in a.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}: expected any of {', '.join(SCENARIOS)}")
    if a.backlog:
        BACKLOG["full"] = a.backlog
    return asyncio.run(run(a.scenarios or list(SCENARIOS), a.short, a.keep))


if __name__ == "__main__":
    sys.exit(main())
