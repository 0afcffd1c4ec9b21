"""uvloop against asyncio's own loop: the throughput pipeline on each, alternated.

    uv run python -m loadtest.loops [--events N] [--rounds N]

The services read VEBUS_EVENT_LOOP (vebus.runtime.eventloop); each round runs the
throughput scenario's pipeline (filter + dispatcher, one route, the immediate sink) once
with `asyncio` and once with `uvloop`, and prints events/s and each service's CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from loadtest.common import print_table
from loadtest.scenarios import _pipeline_run
from vebus import names


async def main(events: int, rounds: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vebus-loops-") as tmp:
        for i in range(rounds):
            for loop in ("asyncio", "uvloop"):
                os.environ[names.ENV_EVENT_LOOP] = loop  # the services inherit it
                r = await _pipeline_run(Path(tmp) / f"{loop}{i}", events, 1)
                cpu = {f"{k}_cpu_us/ev": v for k, v in r["cpu_us_per_event"].items()}
                rows.append({"round": i + 1, "loop": loop, "events/s": r["events_per_s"], **cpu})
    for loop in ("asyncio", "uvloop"):
        mine = [r for r in rows if r["loop"] == loop]
        rows.append({"round": "median", "loop": loop,
                     **{k: statistics.median(r[k] for r in mine) for k in mine[0]
                        if k not in ("round", "loop")}})  # fmt: skip
    return rows


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.loops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    print_table("uvloop against asyncio's loop", asyncio.run(main(a.events, a.rounds)))


if __name__ == "__main__":
    cli()
