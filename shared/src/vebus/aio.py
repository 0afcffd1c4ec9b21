"""asyncio helpers: loops that stop, sleeps that end early, and cancels 3.11 lost.

Every long-running loop in vebus is stopped in one of two ways: an event (`stopping`, set
on SIGTERM: finish the round, then leave) or cancellation (a TaskGroup or `task.cancel()`
ends it mid-round). The helpers here serve both at once, so a loop cannot forget either:

    async for _ in aio.every(5.0, stopping):          # a round now, then every 5 s
        await sweep()

    async for _ in aio.every(renew_every, wait_first=True):   # stopped by cancellation only
        await renew()

    async for _ in aio.until_stopped(stopping):       # rounds that block on something else
        await handle(await next_update())

    if await aio.sleep(delay, stopping):              # True: stopping was set meanwhile
        return

Why a cancel can be lost: on Python 3.11, `asyncio.wait_for`, which nats-py uses for every
request (JetStream publish acks, KV get/put, consumer_info...), returns the result instead
of raising when a cancel races with it (fixed in 3.12). The task is still marked as
cancelling, but nothing raised: a loop that is stopped only by cancellation then goes round
again, sleeps, and the stop that cancelled it waits for ever. Each helper raises that lost
cancel (`raise_if_cancelled`) before every round and after every sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["cancel_requested", "every", "raise_if_cancelled", "sleep", "until_stopped"]


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


async def sleep(seconds: float, stopping: asyncio.Event | None = None) -> bool:
    """Wait `seconds`, or less if `stopping` is set meanwhile; True when it is set.

    A cancel lost before the call is raised instead of sleeping.
    """
    raise_if_cancelled()
    if stopping is None:
        await asyncio.sleep(max(0.0, seconds))
        return False
    if not stopping.is_set() and seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stopping.wait()
    return stopping.is_set()


async def every(
    interval: float, stopping: asyncio.Event | None = None, *, wait_first: bool = False
) -> AsyncIterator[int]:
    """The rounds of a periodic loop: yields 0, 1, 2, ... `interval` seconds apart.

    The first round comes at once (`wait_first`: after one interval). Ends when `stopping`
    is set (a wait in progress ends at once), or by cancellation; a cancel lost inside a
    round is raised before the next one.
    """
    round_ = 0
    if wait_first and await sleep(interval, stopping):
        return
    while stopping is None or not stopping.is_set():
        raise_if_cancelled()
        yield round_
        round_ += 1
        if await sleep(interval, stopping):
            return


async def until_stopped(stopping: asyncio.Event) -> AsyncIterator[int]:
    """The rounds of a loop that waits on something else: yields until `stopping` is set,
    raising a cancel lost inside a round before the next one."""
    round_ = 0
    while not stopping.is_set():
        raise_if_cancelled()
        yield round_
        round_ += 1
