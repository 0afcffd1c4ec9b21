"""In-process matching throughput for 1, 100 and 1,000 routes (each event matches one route).

    uv run python -m loadtest.matching [--short]

Two route sets, both with one route per "class" of event so that every event matches
exactly one route:

- `exact`: every route is `type` exact + `data.UserName` anything-but + `data.Vm.Name`
  prefix (the README's example route, one per event type);
- `mixed`: four shapes in turn (exact type; nested exact Vm name with a numeric range;
  type prefix; equals-ignore-case subject with a source suffix), so that several field
  paths and kinds of key are in the index at once. Its "1 route" is each shape alone
  (over the same share of events), and a row of 4 routes (one per shape) shows what the
  three indexed fields cost by themselves.

Each is run through the filter's Router (the PatternIndex) and, for comparison, through a
linear loop over every route's Pattern.matches. The goal (issue 5): 1,000 routes at least
half as fast as 1 route through the Router.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.common import print_table, write_results
from vebus.config import Route, parse_config
from vebus.events.patterns import compile_pattern
from vebus.routing.router import Router

SAMPLE = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "veba" / "veba-VmPoweredOffEvent.json"
)
ROUTE_COUNTS = (1, 100, 1000)
#: the mixed scenario also runs one route of each shape together: the same fields indexed
#: as with 1,000 routes, which tells the cost of more fields from the cost of more routes
MIXED_COUNTS = (1, 4, 100, 1000)
GOAL = 0.5


def _base_event() -> dict[str, Any]:
    """The VEBA VmPoweredOffEvent as the filter matches it (attributes plus decoded data)."""
    doc: dict[str, Any] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    doc["subject"] = "VmPoweredOffEvent"
    doc["vsphereapiversion"] = "8.0.2.0"
    return doc


def _exact(i: int) -> tuple[dict[str, Any], Callable[[dict[str, Any]], None]]:
    pattern = {
        "type": [f"com.vmware.vsphere.Event{i}.v0"],
        "data": {"UserName": [{"anything-but": ""}], "Vm": {"Name": [{"prefix": "test-"}]}},
    }

    def shape(event: dict[str, Any]) -> None:
        event["type"] = f"com.vmware.vsphere.Event{i}.v0"

    return pattern, shape


def _mixed(i: int) -> tuple[dict[str, Any], Callable[[dict[str, Any]], None]]:
    kind = i % 4
    if kind == 0:
        return _exact(i)
    if kind == 1:
        pattern: dict[str, Any] = {
            "data": {"Vm": {"Name": [f"vm-{i}"]}, "Key": [{"numeric": [">", 0, "<", 1e9]}]}
        }

        def shape(event: dict[str, Any]) -> None:
            event["data"]["Vm"]["Name"] = f"vm-{i}"

        return pattern, shape
    if kind == 2:
        pattern = {"type": [{"prefix": f"com.example.Prefixed{i}."}]}

        def shape(event: dict[str, Any]) -> None:
            event["type"] = f"com.example.Prefixed{i}.Something.v0"

        return pattern, shape
    pattern = {
        "subject": [{"equals-ignore-case": f"class{i}event"}],
        "source": [{"suffix": "/sdk"}],
    }

    def shape(event: dict[str, Any]) -> None:
        event["subject"] = f"Class{i}Event"

    return pattern, shape


SCENARIOS = {"exact": _exact, "mixed": _mixed}
#: how many route shapes each scenario cycles through
SHAPES = {"exact": 1, "mixed": 4}


def build(scenario: str, indices: range) -> tuple[list[Route], list[dict[str, Any]]]:
    """Routes number `indices` and one event per route that matches that route alone."""
    make = SCENARIOS[scenario]
    raw_routes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    base = _base_event()
    for i in indices:
        pattern, shape = make(i)
        raw_routes.append({"name": f"r{i}", "match": pattern, "sink": {"kind": "console"}})
        event = copy.deepcopy(base)
        event["type"] = "com.vmware.vsphere.Unrouted.v0"
        event["data"]["Vm"]["Name"] = "test-01"
        shape(event)
        events.append(event)
    routes = parse_config({"routes": raw_routes}, {}).routes
    return routes, events


Match = Callable[[Mapping[str, Any]], list[Route]]


@dataclass
class Group:
    """A router (and the same routes as a linear loop) with the events sent through it."""

    router: Router
    linear: Match
    events: list[dict[str, Any]]


def _linear(routes: list[Route]) -> Match:
    compiled = [(r, compile_pattern(r.match)) for r in routes]
    return lambda event: [r for r, p in compiled if p.matches(event)]


def _groups(scenario: str, count: int, events_per_pass: int) -> list[Group]:
    """One group of `count` routes; for 1 route, one group per route shape of the scenario.

    A single route has a single shape: measuring "1 route" on one shape only would compare
    1,000 routes of every shape against the cheapest one. Each shape alone, over the same
    share of events, is the fair baseline.
    """
    shapes = SHAPES[scenario] if count == 1 else 1
    groups = []
    for first in range(shapes):
        routes, one_each = build(scenario, range(first, first + count))
        # distinct event objects (one object over and over would sit in the CPU cache and
        # flatter the small route counts), spread evenly over the routes
        n = events_per_pass // shapes
        events = [copy.deepcopy(one_each[i % count]) for i in range(n)]
        router, linear = Router(routes), _linear(routes)
        for event in events:
            assert [r.name for r in router.match(event)] == [r.name for r in linear(event)]
            assert len(router.match(event)) == 1, event
        groups.append(Group(router, linear, events))
    return groups


def rate(groups: list[Group], use: str, seconds: float, limit: int) -> float:
    """Events matched per CPU second of this process, over a run of about `seconds` of CPU.

    CPU time, not wall time: on a shared machine the process is often descheduled, and
    the time others run is not matching time.
    """
    done = 0
    start = time.process_time()
    deadline = start + seconds
    while time.process_time() < deadline:
        for group in groups:
            match = group.router.match if use == "index" else group.linear
            events = group.events[:limit]
            for event in events:
                match(event)
            done += len(events)
    return done / (time.process_time() - start)


def measure(scenario: str, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Every route count of one scenario, measured in interleaved rounds.

    The machines are shared and others' bursts come and go: each round measures every
    route count once, back to back, and the ratio to 1 route is taken within the round;
    the figure kept is the median of those ratios (rates: the best of the rounds).
    """
    counts = MIXED_COUNTS if scenario == "mixed" else ROUTE_COUNTS
    setups = [(count, _groups(scenario, count, 1000)) for count in counts]
    best: dict[tuple[int, str], float] = {}
    ratios: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        indexed: dict[int, float] = {}
        for count, groups in setups:
            for use, limit in (("index", 1000), ("linear", max(50, 1000 // count))):
                value = rate(groups, use, seconds, limit)
                best[count, use] = max(best.get((count, use), 0.0), value)
                if use == "index":
                    indexed[count] = value
        for count in counts:
            ratios[count].append(indexed[count] / indexed[counts[0]])
    return [
        {
            "scenario": scenario,
            "routes": count if len(groups) == 1 else f"{count} (x{len(groups)} shapes)",
            "indexed": f"{sum(g.router.indexed for g in groups)}/{count * len(groups)}",
            "events/s (index)": best[count, "index"],
            "events/s (linear)": best[count, "linear"],
            "vs 1 route (median)": statistics.median(ratios[count]),
        }
        for count, groups in setups
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.matching", description=__doc__)
    parser.add_argument("--short", action="store_true", help="a few seconds in all")
    args = parser.parse_args(argv)
    seconds, rounds = (0.03, 5) if args.short else (0.05, 40)
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, float] = {}
    for scenario in SCENARIOS:
        scenario_rows = measure(scenario, seconds, rounds)
        rows.extend(scenario_rows)
        verdicts[scenario] = scenario_rows[-1]["vs 1 route (median)"]
    print_table(f"matching: one event matches one route ({rounds} rounds)", rows)
    met = {scenario: ratio >= GOAL for scenario, ratio in verdicts.items()}
    print(f"\n1,000 routes vs 1 route (goal >= {GOAL}):")
    for scenario, ratio in verdicts.items():
        print(f"  {scenario}: {ratio:.2f} {'met' if met[scenario] else 'NOT met'}")
    mixed = [r for r in rows if r["scenario"] == "mixed"]
    same_fields = mixed[-1]["vs 1 route (median)"] / mixed[1]["vs 1 route (median)"]
    print(f"  mixed, 1,000 routes vs 4 routes of the same shapes (same fields): {same_fields:.2f}")
    path = write_results(
        "matching-short" if args.short else "matching",
        {
            "short": args.short,
            "rows": rows,
            "ratio_1000_vs_1": verdicts,
            "mixed_1000_vs_4": same_fields,
            "goal": GOAL,
            "met": met,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
