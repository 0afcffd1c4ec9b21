"""Routes compiled once: which routes does an event match."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vebus.config import Route
from vebus.patterns import Pattern, compile_pattern

__all__ = ["Router"]


class Router:
    """Holds every route's compiled pattern; a route with an empty `match` takes every event."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes: list[tuple[Route, Pattern | None]] = [
            (r, compile_pattern(r.match, path=f"routes[{i}].match") if r.match else None)
            for i, r in enumerate(routes)
        ]

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, event: Mapping[str, Any]) -> list[Route]:
        """The routes whose pattern matches `event` (attributes plus decoded `data`)."""
        return [r for r, p in self._routes if p is None or p.matches(event)]
