"""Whether JetStream takes this service's writes: per stream, the publishes that failed
since the last one it stored (for /readyz and `vebus status`).

Every publish a service makes is observed (vebus.bus.observe); its telemetry reports here
what became of it. A stream whose publishes keep failing makes the service not ready, with
the reason, at once when JetStream said it has no storage left (StorageFullError), or after
NOT_READY_AFTER seconds of any other failure (no acknowledgement: a disk that refuses
writes makes nats-server stop answering; a cluster electing a leader does so for a moment,
which is not worth a flap). The first publish stored on that stream clears it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from vebus import names
from vebus.errors import StorageFullError

__all__ = ["NOT_READY_AFTER", "PublishHealth"]

#: seconds of failing publishes (none stored) before a stream makes the service not ready
NOT_READY_AFTER = 10.0


@dataclass
class _Streak:
    """Publishes to one stream that failed, with none stored since the first of them."""

    since: float  # time.time() of the first failure
    started: float  # time.monotonic() of the first failure
    failures: int
    error: str
    storage_full: bool


class PublishHealth:
    """The failing streams of one service process (one event loop: no locking)."""

    def __init__(self) -> None:
        self.failing: dict[str, _Streak] = {}

    def stored(self, subject: str) -> None:
        """A publish to `subject` was acknowledged: its stream takes writes again."""
        if self.failing:  # the hot path: nothing failing, one truth test
            self.failing.pop(names.stream_name_of(subject), None)

    def failed(self, subject: str, error: BaseException) -> None:
        """A publish to `subject` failed with `error` (after its retries)."""
        full = isinstance(error, StorageFullError)
        stream = (
            error.stream if isinstance(error, StorageFullError) else names.stream_name_of(subject)
        )
        streak = self.failing.get(stream)
        if streak is None:
            self.failing[stream] = _Streak(time.time(), time.monotonic(), 1, str(error), full)
            return
        streak.failures += 1
        if full or not streak.storage_full:  # a storage refusal is the reason to keep
            streak.error = str(error)
        streak.storage_full = streak.storage_full or full

    def reason(self) -> str | None:
        """Why JetStream makes this service not ready, or None."""
        now = time.monotonic()
        for stream, s in sorted(self.failing.items(), key=lambda kv: not kv[1].storage_full):
            if s.storage_full:
                return s.error
            if now - s.started >= NOT_READY_AFTER:
                return (
                    f"JetStream: publishes to {stream} failing for {now - s.started:.0f}s "
                    f"({s.failures} failed, none stored): {s.error}"
                )
        return None

    def report(self) -> dict[str, dict[str, Any]]:
        """Per failing stream: since when, how many failures, the last error."""
        return {
            stream: {
                "since": dt.datetime.fromtimestamp(s.since, dt.UTC).isoformat(timespec="seconds"),
                "failures": s.failures,
                "storage_full": s.storage_full,
                "error": s.error,
            }
            for stream, s in self.failing.items()
        }
