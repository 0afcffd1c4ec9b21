"""Times as people give them (`--since 1h`), dead-letter selections, and replay pacing."""

from __future__ import annotations

import datetime as dt

import pytest

from vebus.bus.dlq import DeadLetter, Pacer, Selection, replay_msg_id
from vebus.timespec import format_time, parse_time

NOW = dt.datetime(2025, 1, 2, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("1h", NOW - dt.timedelta(hours=1)),
        ("1h30m", NOW - dt.timedelta(minutes=90)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("500ms", NOW - dt.timedelta(milliseconds=500)),
        ("2025-01-02T03:04:05Z", dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2025-01-02T05:04:05+02:00", dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2025-01-02T03:04:05.123456789Z", dt.datetime(2025, 1, 2, 3, 4, 5, 123456, dt.UTC)),
    ],
)
def test_parse_time(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1 hour", "-1h", "2025-01-02T03:04:05", ""])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|UTC offset"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(
    "text", ["99999999999d", "3000000d", "9" * 400 + "w", "0001-01-01T00:00:00+01:00"]
)
def test_parse_time_refuses_beyond_the_calendar(text: str) -> None:
    with pytest.raises(ValueError, match=r"is outside the years 1 to 9999"):
        parse_time(text, now=NOW)


def test_format_time_is_utc_with_z() -> None:
    when = dt.datetime(2025, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_time(when) == "2025-01-02T03:04:05Z"


def letter(
    ident: int, *, stored: str = "2025-01-02T11:00:00Z", msg_id: str | None = "m"
) -> DeadLetter:
    return DeadLetter(
        id=ident, route="r1", sink="webhook", code="HTTP_5XX", error="", status=503,
        attempts=1, exhausted="max_attempts", first_attempt=None, last_attempt=None,
        stored_at=stored, msg_id=msg_id, headers={}, body=b"",
    )  # fmt: skip


def test_selection() -> None:
    dl = letter(7)
    assert Selection().matches(dl)
    assert Selection().is_empty()
    assert Selection(route="r1", code="http_5xx").matches(dl)
    assert not Selection(route="r2").matches(dl)
    assert not Selection(ids=[1, 2]).matches(dl)
    assert Selection(since=NOW - dt.timedelta(hours=1)).matches(dl)  # stored at 11:00
    assert not Selection(until=NOW - dt.timedelta(hours=1)).matches(dl)  # exclusive
    assert not Selection(since=NOW).matches(letter(7, stored=""))
    assert Selection(route="r1", code="POISON").describe() == "route r1; code POISON"


def test_replay_msg_id_keeps_only_the_original() -> None:
    assert replay_msg_id(letter(7, msg_id="vc01:1:5:r1")) == "vc01:1:5:r1:replay:7"
    assert replay_msg_id(letter(9, msg_id="vc01:1:5:r1:replay:7")) == "vc01:1:5:r1:replay:9"
    assert replay_msg_id(letter(9, msg_id=None)) == "dlq-9:replay:9"


def test_pacer_spaces_without_bursting() -> None:
    now = [100.0]
    pacer = Pacer(10, clock=lambda: now[0])
    assert pacer.delay() == 0
    assert pacer.delay() == pytest.approx(0.1)
    assert pacer.delay() == pytest.approx(0.2)
    now[0] += 5.0  # idle: the next slot is now, not a burst of the missed ones
    assert pacer.delay() == 0
    assert pacer.delay() == pytest.approx(0.1)
    assert Pacer(0).delay() == 0
    with pytest.raises(ValueError):
        Pacer(-1)


def test_deadletter_config() -> None:
    from vebus.config import ConfigError, parse_config

    default = parse_config({}).deadletter
    assert (default.api.listen, default.api.token, default.replay_rate) == (
        "127.0.0.1:8085",
        None,
        50,
    )
    assert default.alert is None
    cfg = parse_config(
        {"deadletter": {"api": {"listen": "", "token": "${T}"}, "alert": {"route": "a"}}},
        env={"T": "x" * 16},
    ).deadletter
    assert (cfg.api.listen, cfg.api.token, cfg.alert and cfg.alert.threshold) == ("", "x" * 16, 100)
    # a process that does not resolve the section keeps the reference, unchecked
    kept = parse_config({"deadletter": {"api": {"token": "${T}"}}}, env={}, service="filter")
    assert kept.deadletter.api.token == "${T}"
    for raw, message in [
        ({"api": {"listen": "8085"}}, "deadletter.api.listen: expected host:port"),
        ({"api": {"token": "short"}}, "deadletter.api.token: expected at least 16 characters"),
        ({"alert": {"route": "a", "threshold": 0}}, "deadletter.alert.threshold: expected >= 1"),
        ({"replay_rate": -1}, "deadletter.replay_rate: expected >= 0"),
        ({"alert": {"rout": "a"}}, "deadletter.alert.rout: unknown key"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config({"deadletter": raw})
        assert any(line.startswith(message) for line in e.value.errors), e.value.errors
