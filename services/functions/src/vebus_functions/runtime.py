"""What every runtime (python, command, http) offers the functions service, and its
restart backoff.

A runtime runs one function's invocations in processes of the function's own and says how
each ended as an Outcome; it never raises for what the function did. `crashed` (the process
died during the invocation) is the only status without a verdict on the event.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from vebus.bus.cloudevent import CloudEvent
from vebus_functions.protocol import Status

__all__ = ["Call", "Outcome", "RestartBackoff", "Runtime", "describe_exit"]


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """What an invocation knows besides the event."""

    route: str
    #: the `vcenters[]` name of the event's vCenter, when known
    vcenter: str | None = None
    traceparent: str | None = None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one invocation ended."""

    status: Status
    message: str = ""
    #: a traceback, or the tail of the process's output
    detail: str | None = None
    retry_after: float | None = None
    #: reply events, each one JSON object (vebus_functions.replies)
    replies: list[bytes] = msgspec.field(default_factory=list)
    #: seconds from the start of the invocation in a process to its end
    duration: float = 0.0


class Runtime(Protocol):
    """One function's processes."""

    async def start(self) -> None:
        """Start what runs ahead of the first event (workers, the server)."""

    async def invoke(self, event: CloudEvent, call: Call) -> Outcome:
        """Run the function once on `event`. A cancel (the route's timeout) kills the
        process running it."""
        ...

    async def close(self) -> None:
        """Stop every process of the function (an invocation in progress is killed)."""

    def state(self) -> dict[str, Any]:
        """Processes ready, busy and starting, restarts, the last start problem."""
        ...


class RestartBackoff:
    """Delays between restarts of a process that keeps dying: none for the first, then
    0.25 s doubling up to MAX; a process that did its work resets it."""

    MAX = 30.0

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """One more death; the delay before the next start."""
        self.failures += 1
        return 0.0 if self.failures <= 1 else min(self.MAX, 0.25 * 2 ** (self.failures - 2))

    def succeeded(self) -> None:
        self.failures = 0


def describe_exit(returncode: int | None) -> str:
    """`exit status 3`, `killed by signal SIGKILL`."""
    import signal

    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit status {returncode}"
