"""SIGKILL a random service replica every few seconds while events flow (each service in
turn, a random one of its replicas, never the last one serving): `vebus up` restarts each,
and every event is delivered (lost = 0, no dead letters)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import Bus, MakeLedger, source
from tests.support.ledger import Fault, Producer, Replica, UpCluster, settle

pytestmark = pytest.mark.chaos

ROUTE = "kills"


@dataclass(frozen=True)
class Form:
    events: int
    rate: float
    kill_every: float


FORMS = [
    pytest.param(Form(events=3000, rate=150, kill_every=3.0), id="short"),
    pytest.param(Form(events=20000, rate=150, kill_every=3.0), id="long", marks=pytest.mark.slow),
]


async def watch_recovery(cluster: UpCluster, replica: Replica, old_pid: int, fault: Fault) -> None:
    """Mark `fault` recovered once the replica runs again (new PID) and is ready."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pid = cluster.pid_of(replica)
        back = pid is not None and pid != old_pid
        if back and await asyncio.to_thread(cluster.readyz, replica) is not None:
            fault.recovered()
            return
        await asyncio.sleep(0.2)


def serving(cluster: UpCluster, service: str) -> list[tuple[Replica, int]]:
    """The replicas of `service` that run and are ready, with their PIDs."""
    out = []
    for r in cluster.of(service):
        pid = cluster.pid_of(r)
        if pid is not None and cluster.readyz(r) is not None:
            out.append((r, pid))
    return out


@pytest.mark.parametrize("form", FORMS)
async def test_random_replica_kills_lose_nothing(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: Form
) -> None:
    seed = int(os.environ.get("VEBUS_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    led = ledger(f"replica kills ({form.events} events, seed {seed})", bus.sink(ROUTE))
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    cluster = bus.cluster
    producer = Producer(
        js, led, source=source(ROUTE), prefix=f"kill{seed}", count=form.events, rate=form.rate
    )
    producing = asyncio.create_task(producer.run())
    watchers = []
    order: list[str] = []
    while not producer.done.is_set():
        await asyncio.wait({producing}, timeout=form.kill_every)
        if producer.done.is_set():
            break
        if not order:  # every service in turn, in a random order; a random replica of it
            order = rng.sample(UpCluster.SERVICES, len(UpCluster.SERVICES))
        service = order.pop()
        # never the last one serving: with every replica of a stage down (and `vebus up`
        # backing off restarts of a replica that keeps dying, up to 30s) the route's backlog
        # would reach streams.route_max_msgs, which is the route-full test's business
        alive = await asyncio.to_thread(serving, cluster, service)
        if len(alive) < 2:
            continue
        replica, pid = rng.choice(alive)
        os.kill(pid, signal.SIGKILL)
        fault = led.fault(f"SIGKILL {replica.label} (pid {pid})")
        watchers.append(asyncio.create_task(watch_recovery(cluster, replica, pid, fault)))
    await producing

    # a killed filter's events come back after its ack_wait (30s), a dispatcher's after 12s
    await settle(led, js, bus.sink(ROUTE), ROUTE, timeout=120)
    await asyncio.gather(*watchers)
    await cluster.wait_all_ready()
    assert len(led.faults) >= 2, led.report()
    assert all(f.recovered_after is not None for f in led.faults), led.report()
    led.check()
