"""The live view's filter box: an EventBridge pattern, or plain words.

Text that starts with `{` is a pattern in JSON, compiled by the same code as a route's
`match` (so it means what it would mean in a route); anything else is words, each of
which must appear, ignoring case, in the event's type, vCenter, object or user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vebus.bus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError, PatternError
from vebus.events.patterns import Pattern, compile_pattern
from vebus_console.summary import Row

__all__ = ["EventFilter", "parse_filter"]


@dataclass(frozen=True)
class EventFilter:
    """A parsed filter box; `matches` decides for one event and its row."""

    text: str = ""
    pattern: Pattern | None = None
    words: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.pattern is not None or bool(self.words)

    def matches(self, event: CloudEvent, row: Row) -> bool:
        if self.pattern is not None:
            try:
                return self.pattern.matches(event.as_match_input())
            except InvalidEventError:
                return False
        if self.words:
            haystack = row.words()
            return all(w in haystack for w in self.words)
        return True


def parse_filter(text: str | None) -> EventFilter:
    """The filter for `text`; ValueError says what is wrong with a pattern."""
    text = (text or "").strip()
    if not text:
        return EventFilter()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"pattern: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("pattern: expected a JSON object")
        try:
            return EventFilter(text=text, pattern=compile_pattern(raw, path="pattern"))
        except PatternError as e:
            raise ValueError(str(e)) from None
    return EventFilter(text=text, words=tuple(w.lower() for w in text.split()))
