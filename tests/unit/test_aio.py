"""A loop stopped only by cancellation ends even when one cancel is lost inside a round
(Python 3.11's asyncio.wait_for, used by nats-py for every request, can lose one)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from vebus import aio
from vebus.aio import cancel_requested, raise_if_cancelled


class LosesOneCancel:
    """A round that loses the first cancel landing in it, as 3.11's wait_for can."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.lost = False

    async def __call__(self) -> None:
        self.entered.set()
        try:
            await asyncio.sleep(3600)  # a NATS request whose reply races with the cancel
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost = True


async def scheduled_loop(round_: LosesOneCancel, *, guarded: bool) -> None:
    """The shape of the collector's check loop: a round, then a sleep, until cancelled."""
    while True:
        await round_()
        if guarded:
            raise_if_cancelled()
        await asyncio.sleep(3600)


@pytest.mark.parametrize("guarded", [True, False])
async def test_a_loop_that_checks_ends_although_its_cancel_was_lost(guarded: bool) -> None:
    round_ = LosesOneCancel()
    task = asyncio.create_task(scheduled_loop(round_, guarded=guarded))
    await round_.entered.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    assert round_.lost
    try:
        # without the check the loop sleeps on, its task still 'cancelling': a stop that
        # waits for it waits for ever
        assert task.done() is guarded
        if guarded:
            assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancel_requested_is_false_unless_a_cancel_is_outstanding() -> None:
    seen: list[bool] = []

    async def body() -> None:
        seen.append(cancel_requested())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # a timeout cancels, then withdraws it
                await asyncio.sleep(1)
        seen.append(cancel_requested())
        await LosesOneCancel()()
        seen.append(cancel_requested())

    task = asyncio.create_task(body())
    await asyncio.sleep(0.05)
    task.cancel()
    await task
    assert seen == [False, False, True]
    assert not cancel_requested()  # outside any cancelled task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel from 3.12 on")
async def test_python_3_11_wait_for_loses_a_cancel_that_races_with_its_result() -> None:
    """The premise: a reply and a cancel in the same loop turn, and wait_for returns."""
    reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[bool] = []

    async def request() -> int:
        got = await asyncio.wait_for(reply, 10)
        seen.append(cancel_requested())
        return got

    task = asyncio.create_task(request())
    await asyncio.sleep(0)  # the task waits in wait_for
    reply.set_result(1)
    task.cancel()
    assert await task == 1
    assert seen == [True]


async def test_every_ends_although_a_cancel_was_lost_in_a_round() -> None:
    """The loop helper does the check itself: a loop written with it cannot forget it."""
    round_ = LosesOneCancel()

    async def loop() -> None:
        async for _ in aio.every(3600, wait_first=False):
            await round_()

    task = asyncio.create_task(loop())
    await round_.entered.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    assert round_.lost
    assert task.done()
    assert task.cancelled()


async def test_until_stopped_ends_although_a_cancel_was_lost_in_a_round() -> None:
    round_ = LosesOneCancel()

    async def loop() -> None:
        async for _ in aio.until_stopped(asyncio.Event()):
            await round_()

    task = asyncio.create_task(loop())
    await round_.entered.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    assert round_.lost
    assert task.done()
    assert task.cancelled()


async def test_every_counts_rounds_and_a_stop_ends_its_wait_at_once() -> None:
    stopping = asyncio.Event()
    rounds: list[int] = []

    async def loop() -> None:
        async for n in aio.every(3600, stopping):
            rounds.append(n)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    assert rounds == [0]  # the first round at once, then an hour's wait
    stopping.set()
    await asyncio.wait_for(task, 1.0)  # the wait ended with the stop, not after the hour
    assert rounds == [0]


async def test_every_with_wait_first_waits_an_interval_before_the_first_round() -> None:
    stopping = asyncio.Event()
    rounds: list[int] = []

    async def loop() -> None:
        async for n in aio.every(0.05, stopping, wait_first=True):
            rounds.append(n)
            if n == 2:
                stopping.set()

    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(loop(), 2.0)
    assert rounds == [0, 1, 2]
    assert asyncio.get_running_loop().time() - started >= 0.15


async def test_sleep_says_whether_it_was_stopped() -> None:
    stopping = asyncio.Event()
    assert await aio.sleep(0.01, stopping) is False
    asyncio.get_running_loop().call_later(0.02, stopping.set)
    assert await asyncio.wait_for(aio.sleep(3600, stopping), 1.0) is True
    assert await aio.sleep(3600, stopping) is True  # already set: no wait at all
