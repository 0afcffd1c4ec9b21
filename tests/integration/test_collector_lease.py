"""The lease and the checkpoint's compare-and-set against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client

from vebus.names import LEASE_BUCKET
from vebus_collector.checkpoint import CheckpointStore, ensure_bucket
from vebus_collector.errors import CheckpointConflictError, LeaseLostError
from vebus_collector.lease import Lease, ensure_lease_bucket
from vebus_collector.position import Position

pytestmark = pytest.mark.integration

TTL = 3.0


async def _leases(nc: Client) -> tuple[object, float]:
    js = nc.jetstream()
    # a short-lived bucket: the same code reads the TTL from the bucket
    from nats.js.api import KeyValueConfig

    await js.create_key_value(KeyValueConfig(bucket=LEASE_BUCKET, history=1, ttl=TTL))
    return await ensure_lease_bucket(js, 1)


async def test_one_holder_and_a_standby_takes_over_after_the_ttl(nc: Client) -> None:
    kv, ttl = await _leases(nc)
    assert ttl == TTL
    a = Lease(kv, "vc1", "replica-a", ttl)  # type: ignore[arg-type]
    b = Lease(kv, "vc1", "replica-b", ttl)  # type: ignore[arg-type]
    other = Lease(kv, "vc2", "replica-b", ttl)  # type: ignore[arg-type]
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert b.other is not None
    assert b.other.holder == "replica-a"
    assert await other.try_acquire(), "each vCenter has its own lease"

    # a renews: b stays out well past the TTL
    keeping = asyncio.create_task(a.keep())
    await asyncio.sleep(TTL + 1)
    assert not await b.try_acquire()
    assert a.held()

    # a dies (stops renewing): b gets it within the TTL and a poll
    keeping.cancel()
    died = time.monotonic()
    stopping = asyncio.Event()
    assert await asyncio.wait_for(b.wait_acquire(stopping), TTL + 3)
    took = time.monotonic() - died
    assert took <= TTL + 1.5, took
    assert not a.held(), "a's own deadline passed before the server could expire it"

    # a comes back and tries to renew: the compare-and-set fails
    a.deadline = time.monotonic() + 10  # pretend its clock says otherwise
    with pytest.raises(LeaseLostError, match="replica-b"):
        await asyncio.wait_for(a.keep(), 5)

    # a graceful release is seen at once
    await b.release()
    assert await a.try_acquire()


async def test_a_stale_leader_cannot_move_the_checkpoint(nc: Client) -> None:
    kv = await ensure_bucket(nc.jetstream(), 1)
    old = CheckpointStore(kv, "vc1")
    await old.save(Position(epoch=0, key=10, created_time="t10"))
    await old.save(Position(epoch=0, key=11, created_time="t11"))

    new = CheckpointStore(kv, "vc1")
    assert await new.claim() == Position(epoch=0, key=11, created_time="t11")
    with pytest.raises(CheckpointConflictError):
        await old.save(Position(epoch=0, key=12, created_time="t12"))
    await new.save(Position(epoch=0, key=13, created_time="t13"))
    assert await CheckpointStore(kv, "vc1").load() == Position(epoch=0, key=13, created_time="t13")


async def test_the_first_checkpoint_is_created_only_once(nc: Client) -> None:
    kv = await ensure_bucket(nc.jetstream(), 1)
    a, b = CheckpointStore(kv, "vc9"), CheckpointStore(kv, "vc9")
    assert await a.claim() is None
    assert await b.claim() is None
    await b.save(Position(epoch=0, key=1))
    with pytest.raises(CheckpointConflictError):
        await a.save(Position(epoch=0, key=2))


async def test_an_active_replica_that_cannot_reach_its_vcenter_hands_the_lease_on(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vebus.config import VCenterConfig
    from vebus.local.embedded import free_port
    from vebus_collector import runner as runner_module
    from vebus_collector.runner import VCenterRunner
    from vebus_collector.status import VCenterStatus

    monkeypatch.setattr(runner_module, "HANDOFF_AFTER", 1.5)
    kv, ttl = await _leases(nc)
    js = nc.jetstream()
    cfg = VCenterConfig(
        name="vc1", url=f"http://127.0.0.1:{free_port()}/sdk", username="u", password="p"
    )
    stopping = asyncio.Event()
    status = VCenterStatus("vc1")
    runner = VCenterRunner(
        cfg,
        js=js,
        checkpoints=await ensure_bucket(js, 1),
        leases=kv,  # type: ignore[arg-type]
        lease_ttl=ttl,
        instance="replica-a",
        status=status,
        stopping=stopping,
        max_payload=nc.max_payload,
        publish_window=16,
    )
    task = asyncio.create_task(runner.run())
    try:
        other = Lease(kv, "vc1", "replica-b", ttl)  # type: ignore[arg-type]
        deadline = time.monotonic() + 15
        while not status.active:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert not await other.try_acquire()
        # unreachable for HANDOFF_AFTER: the lease is released well before its TTL
        while not await other.try_acquire():
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)
        assert status.state in ("unreachable", "standby", "connecting")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)
