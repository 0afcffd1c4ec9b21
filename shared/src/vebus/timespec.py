"""Points in time as people give them: RFC 3339 (`2025-01-02T03:04:05Z`) or an age (`1h`).

Used by `vebus dlq list --since`, `vebus replay --from` and the deadletter HTTP API, so that
the same words mean the same instant everywhere. An age is counted back from now; `now` is
accepted too. A time without a UTC offset is refused rather than guessed.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["format_time", "parse_time", "utcnow"]

_AGE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`: `2025-01-02T03:04:05.123456Z`."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """An aware datetime from RFC 3339, `now`, or an age such as `90s`, `1h`, `1h30m`, `7d`.

    ValueError says what was expected, or that the time falls outside the years 1 to 9999.
    """
    text = value.strip()
    now = now or utcnow()
    if text.lower() == "now":
        return now
    if _AGE.match(text):
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(text))
        try:
            return now - dt.timedelta(seconds=seconds)
        except OverflowError:  # too many days for a timedelta, or a date before the year 1
            raise _out_of_range(value) from None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected an RFC 3339 time like 2025-01-02T03:04:05Z or an age like 1h, got {value!r}"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset: add Z (UTC) or an offset such as +02:00")
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in the year 0 in UTC
        raise _out_of_range(value) from None


def _out_of_range(value: str) -> ValueError:
    return ValueError(f"{value!r} is outside the years 1 to 9999")
