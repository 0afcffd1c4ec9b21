"""Routes compiled once into one index: which routes does an event match."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vebus.config import Route
from vebus.events.patterns import Explanation, Pattern, PatternIndex, compile_pattern, explain_match
from vebus.names import route_subject

__all__ = ["Router"]


class Router:
    """Every route's pattern in one PatternIndex; a route with an empty `match` takes all.

    Matching an event costs about the same with a thousand routes as with ten: only the
    routes whose indexed field values the event has are evaluated in full.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self.patterns: dict[str, Pattern | None] = {
            r.name: compile_pattern(r.match, path=f"routes[{i}].match") if r.match else None
            for i, r in enumerate(self.routes)
        }
        #: each route's subject in VEBUS_ROUTES
        self.subjects: dict[str, str] = {r.name: route_subject(r.name) for r in self.routes}
        self._index = PatternIndex((r, self.patterns[r.name]) for r in self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def indexed(self) -> int:
        """How many routes are found through the index (the others are tried on each event)."""
        return self._index.indexed

    def match(self, event: Mapping[str, Any]) -> list[Route]:
        """The routes whose pattern matches `event` (attributes plus decoded `data`), in order."""
        return self._index.matching(event)

    def explain(self, event: Mapping[str, Any]) -> list[tuple[Route, Explanation]]:
        """Every route, in order, with whether it matches `event` and why (as `vebus routes
        test` says it); slower than `match`: for one event a person looks at."""
        return [(r, explain_match(self.patterns[r.name], event)) for r in self.routes]
