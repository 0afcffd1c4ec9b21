"""vebus functions: the operator's code, run on routed events in worker processes.

What a Python function may import from here (nothing else of the package is its API):

    from vebus_functions import Reject, RetryLater

    def handle(event, ctx):
        if not event.data.get("Vm"):
            raise Reject("no VM in this event")       # a dead letter now, not retried
        if vcenter_is_busy():
            raise RetryLater("busy", after=30)        # tried again in 30 s
        ...

The service itself is `python -m vebus_functions` (vebus_functions.app); the worker
processes it starts are `python -m vebus_functions.worker`. docs/functions.md has the
contract of each runtime.
"""

from __future__ import annotations

__all__ = ["Reject", "RetryLater"]


class RetryLater(Exception):
    """Raise it to have the event offered again later (after `after` seconds if given,
    else after the route's backoff); counts as an attempt (dead letter FUNCTION_RETRY once
    the route's attempts are used up)."""

    def __init__(self, message: str = "", *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Reject(Exception):
    """Raise it to refuse the event for good: it becomes a dead letter (FUNCTION_REJECTED)
    at once and is not retried."""
