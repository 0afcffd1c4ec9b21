"""Pure logic of the route store: paused time overlapping an event, missing variables."""

from __future__ import annotations

import pytest

from vebus.routing.store import PausePeriod, PauseRecord, missing_env


def record(*periods: tuple[float, float | None]) -> PauseRecord:
    return PauseRecord(route="r", periods=[PausePeriod(s, e) for s, e in periods])


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        (0, 100, 10 + 20),  # both pauses after the event entered
        (15, 100, 5 + 20),  # entered during the first pause: only the rest of it counts
        (25, 100, 20),  # entered between the pauses
        (35, 45, 5),  # `now` falls inside the second pause: 40..45
        (60, 100, 0),  # entered after every pause
    ],
)
def test_paused_seconds_counts_only_the_overlap_with_the_events_time(
    since: float, now: float, expected: float
) -> None:
    assert record((10, 20), (40, 60)).paused_seconds(since, now) == expected


def test_an_open_pause_counts_up_to_now() -> None:
    rec = record((10, 20), (50, None))
    assert rec.paused
    assert rec.since == 50
    assert rec.paused_seconds(0, 70) == 10 + 20
    assert not record((10, 20)).paused
    assert record((10, 20)).since is None


def test_missing_env_names_each_unset_variable_without_a_default_once() -> None:
    raw = {
        "name": "x",
        "sink": {"url": "${HOOK}", "headers": {"a": "${TOKEN}", "b": "${HOOK}"}},
        "match": {"data": {"x": ["${WITH_DEFAULT:-v}", "${SET}"]}},
    }
    assert missing_env(raw, {"SET": "1"}) == ["HOOK", "TOKEN"]
    assert missing_env(raw, {"SET": "1", "HOOK": "h", "TOKEN": "t"}) == []
