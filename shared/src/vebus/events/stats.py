"""Analytics over retained events: counts per type, user, object and hour, top talkers,
and how long paired events took (VmStartingEvent -> VmPoweredOnEvent, and the like).

Pure aggregation: `Stats.add` takes one event's attributes and decoded data.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PAIRS", "Stats"]

#: (start class, end class): the duration between them, per object
PAIRS: tuple[tuple[str, str], ...] = (
    ("VmStartingEvent", "VmPoweredOnEvent"),
    ("VmStoppingEvent", "VmPoweredOffEvent"),
    ("VmBeingCreatedEvent", "VmCreatedEvent"),
    ("VmBeingClonedEvent", "VmClonedEvent"),
    ("VmBeingDeployedEvent", "VmDeployedEvent"),
    ("VmBeingMigratedEvent", "VmMigratedEvent"),
    ("VmRelocatingEvent", "VmRelocatedEvent"),
    ("VmReconfiguredEvent", "VmReconfiguredEvent"),
    ("EnteringMaintenanceModeEvent", "EnteredMaintenanceModeEvent"),
    ("ExitingMaintenanceModeEvent", "ExitMaintenanceModeEvent"),
)
_STARTS = {start: end for start, end in PAIRS if start != end}
_ENDS = {end: start for start, end in PAIRS if start != end}
#: the entity a vSphere event is about, most specific first
_OBJECTS = ("Vm", "Host", "Ds", "Net", "Dvs", "ComputeResource", "Datacenter")


def _object(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(display name, moref value) of the most specific object the event names."""
    for key in _OBJECTS:
        arg = data.get(key)
        if isinstance(arg, Mapping) and arg.get("Name"):
            ref = next((v for v in arg.values() if isinstance(v, Mapping)), {})
            return str(arg["Name"]), str(ref.get("Value", arg["Name"]))
    return None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Stats:
    """Running aggregates; `to_dict` gives what the command prints."""

    top: int = 10
    total: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    by_type: Counter[str] = field(default_factory=Counter)
    by_user: Counter[str] = field(default_factory=Counter)
    by_object: Counter[str] = field(default_factory=Counter)
    by_hour: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    _open: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)
    durations: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, attributes: Mapping[str, str], data: Any) -> None:
        """Count one event (`attributes`: the CloudEvent's; `data`: its decoded JSON)."""
        self.total += 1
        subject = attributes.get("subject") or attributes.get("type", "?")
        self.by_type[subject] += 1
        self.by_source[attributes.get("source", "?")] += 1
        when = _time(attributes.get("time"))
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
            self.by_hour[when.strftime("%Y-%m-%dT%H:00Z")] += 1
        if not isinstance(data, Mapping):
            return
        user = data.get("UserName")
        if user:
            self.by_user[str(user)] += 1
        obj = _object(data)
        if obj is None:
            return
        self.by_object[obj[0]] += 1
        if when is None:
            return
        if subject in _STARTS:
            self._open[(_STARTS[subject], obj[1])] = when
        elif subject in _ENDS and (began := self._open.pop((subject, obj[1]), None)):
            pair = f"{_ENDS[subject]} -> {subject}"
            self.durations[pair].append((when - began).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        """Everything, ready for JSON."""

        def top(c: Counter[str]) -> list[dict[str, Any]]:
            return [{"name": k, "events": n} for k, n in c.most_common(self.top)]

        return {
            "total": self.total,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "by_type": top(self.by_type),
            "by_user": top(self.by_user),
            "by_object": top(self.by_object),
            "by_source": top(self.by_source),
            "by_hour": [{"hour": h, "events": n} for h, n in sorted(self.by_hour.items())],
            "durations": [
                {
                    "pair": pair,
                    "count": len(values),
                    "median_s": statistics.median(values),
                    "max_s": max(values),
                }
                for pair, values in sorted(self.durations.items())
            ],
        }
