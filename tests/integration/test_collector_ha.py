"""Two collector replicas, one vCenter: one is active, the standby takes over when the
active one is killed in the middle of a burst, and the stream holds every key once."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import threading
import time
from collections import Counter

import pytest
from nats.aio.client import Client
from pyVmomi import vim

from tests.conftest import Vcsim
from tests.support.collector import start_replica, stream_keys, vcenter_state, wait_until
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.names import CHECKPOINT_BUCKET

pytestmark = pytest.mark.integration

BURST = 500


def _config(vcsim: Vcsim) -> dict[str, object]:
    return {
        "vcenters": [
            {"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass",
             "start": "earliest", "page_size": 50, "checkpoint_interval": "500ms"}
        ]
    }  # fmt: skip


class Burst(threading.Thread):
    """Posts `count` events as fast as the simulator takes them; `posted` counts them."""

    def __init__(self, url: str, count: int) -> None:
        super().__init__(daemon=True)
        self.vs = VSphere(url)
        self.count = count
        self.posted = 0

    def run(self) -> None:
        em = self.vs.content.eventManager
        for i in range(self.count):
            em.PostEvent(
                vim.event.GeneralUserEvent(
                    message=f"burst {i}",
                    createdTime=dt.datetime.now(dt.UTC),
                    key=0,
                    chainId=0,
                    userName="",
                )
            )
            self.posted += 1


def _active(port: int) -> bool:
    return vcenter_state(port, "vc1").get("role") == "active"


def _standby(port: int) -> bool:
    state = vcenter_state(port, "vc1")
    return state.get("role") == "standby" and state.get("state") == "standby"


async def _assert_every_key_once(nc: Client, vs: VSphere, timeout: float = 60) -> list[int]:
    expected = sorted(int(e.key) for e in await asyncio.to_thread(vs.events))
    assert len(expected) < 1000, "the simulator's ring must still hold every event"
    deadline = time.monotonic() + timeout
    while True:
        keys = await stream_keys(nc, "vc1")
        if keys and max(keys) >= expected[-1]:
            break
        assert time.monotonic() < deadline, f"stream at {max(keys, default=None)}/{expected[-1]}"
        await asyncio.sleep(0.2)
    dupes = {k: n for k, n in Counter(keys).items() if n > 1}
    assert not dupes, f"keys published twice: {dupes}"
    missing = sorted(set(expected) - set(keys))
    assert not missing, f"missing keys: {missing[:20]} ({len(missing)})"
    return keys


async def test_standby_takes_over_from_a_killed_collector_during_a_burst(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    stack.write_config(_config(vcsim))
    a = start_replica(stack, "collector-a")
    await wait_until(lambda: _active(a), 30, "replica a active", stack.procs["collector-a"])
    b = start_replica(stack, "collector-b")
    await wait_until(lambda: _standby(b), 30, "replica b standby", stack.procs["collector-b"])
    assert vcenter_state(b, "vc1").get("holder"), "the standby names the active replica"

    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        burst = Burst(vcsim.url, BURST)
        burst.start()
        await wait_until(lambda: burst.posted >= BURST // 4, 30, "a quarter of the burst")
        stack.procs["collector-a"].signal(signal.SIGKILL)
        killed_at = burst.posted
        took = await wait_until(lambda: _active(b), 30, "b takes over", stack.procs["collector-b"])
        await asyncio.to_thread(burst.join, 60)
        assert killed_at < BURST, "the kill must land inside the burst"
        print(f"\nfailover: replica b active {took:.1f}s after SIGKILL of a (lease TTL 5s)")
        await _assert_every_key_once(nc, vs)
        assert took < 10, f"standby took {took:.1f}s"

        # a graceful stop hands over at once: the lease is released, not left to expire
        a = start_replica(stack, "collector-a2")
        await wait_until(lambda: _standby(a), 30, "replica a2 standby")
        assert stack.procs["collector-b"].stop() == 0
        took = await wait_until(lambda: _active(a), 10, "a2 takes over after SIGTERM of b")
        assert took < 3, f"handover after a graceful stop took {took:.1f}s"
        await asyncio.to_thread(vs.post_events, 20, "after handover")
        await _assert_every_key_once(nc, vs)
    finally:
        await asyncio.to_thread(vs.close)
        await asyncio.to_thread(burst.vs.close)


async def test_a_paused_leader_steps_down_without_touching_the_checkpoint(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    """SIGSTOP the active replica past the lease TTL: the standby takes over; when the old
    one runs again it publishes nothing and writes no checkpoint, and goes to standby."""
    stack.write_config(_config(vcsim))
    a = start_replica(stack, "collector-a")
    await wait_until(lambda: _active(a), 30, "replica a active", stack.procs["collector-a"])
    b = start_replica(stack, "collector-b")
    await wait_until(lambda: _standby(b), 30, "replica b standby", stack.procs["collector-b"])
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    kv = await nc.jetstream().key_value(CHECKPOINT_BUCKET)
    try:
        await asyncio.to_thread(vs.post_events, 10, "before pause")
        await _assert_every_key_once(nc, vs)
        stack.procs["collector-a"].signal(signal.SIGSTOP)
        await asyncio.to_thread(vs.post_events, 10, "while a is paused")
        await wait_until(lambda: _active(b), 30, "b takes over", stack.procs["collector-b"])
        await _assert_every_key_once(nc, vs)
        await asyncio.sleep(1)  # b's checkpoint is written
        before = await kv.get("collector.vc1")

        stack.procs["collector-a"].signal(signal.SIGCONT)
        await wait_until(lambda: _standby(a), 15, "a back to standby", stack.procs["collector-a"])
        after = await kv.get("collector.vc1")
        assert after.value == before.value, "the stale leader did not move the checkpoint"
        assert _active(b)
        await asyncio.to_thread(vs.post_events, 10, "after a resumed")
        await _assert_every_key_once(nc, vs)
        assert "going back to standby" in stack.procs["collector-a"].output()
    finally:
        stack.procs["collector-a"].signal(signal.SIGCONT)
        await asyncio.to_thread(vs.close)
