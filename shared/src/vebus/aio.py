"""asyncio helpers: honouring a cancellation that Python 3.11 lost on the way.

On Python 3.11 `asyncio.wait_for`, which nats-py uses for every request (JetStream publish
acks, KV get/put, consumer_info...), returns the result instead of raising when a cancel
races with it (fixed in 3.12). The task is still marked as cancelling, but nothing raised:
a loop that is stopped only by cancellation then goes round again, sleeps, and the stop
that cancelled it (a TaskGroup, a `task.cancel(); await task`) waits for ever. A loop
like that calls `raise_if_cancelled()` once per round, before its sleep.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_requested", "raise_if_cancelled"]


def cancel_requested() -> bool:
    """True when the current task was asked to cancel, even if no CancelledError came of it.

    A cancel that was handled and withdrawn (`asyncio.timeout` expiring) does not count.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """Raise the CancelledError a lost cancel should have raised (see the module docstring)."""
    if cancel_requested():
        raise asyncio.CancelledError
