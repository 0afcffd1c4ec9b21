"""SIGKILL one NATS node of the three (the leader of VEBUS_ROUTES), let `vebus up` restart
it, then another (the leader of VEBUS_EVENTS, or any other node), while events flow:
streams are R3, so every event is delivered (lost = 0, no dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import Bus, MakeLedger, source
from tests.support.ledger import Fault, Producer, settle
from vebus import names

pytestmark = pytest.mark.chaos

ROUTE = "nodes"
STREAMS = (names.EVENTS_STREAM, names.ROUTES_STREAM, names.DLQ_STREAM)


@dataclass(frozen=True)
class Form:
    events: int
    rate: float
    #: nodes killed one after another (each after the previous one is back)
    kills: int


FORMS = [
    pytest.param(Form(events=2000, rate=100, kills=2), id="short"),
    pytest.param(Form(events=12000, rate=100, kills=6), id="long", marks=pytest.mark.slow),
]


def node_number(name: str | None) -> int | None:
    """`vebus-2` (the server name `vebus up` gives node 2) -> 2."""
    if name and name.startswith("vebus-") and name[6:].isdigit():
        return int(name[6:])
    return None


async def leader_of(js: JetStreamContext, stream: str) -> int | None:
    with contextlib.suppress(Exception):
        info = await js.stream_info(stream)
        return node_number(info.cluster.leader if info.cluster else None)
    return None


async def node_is_current(js: JetStreamContext, n: int) -> bool:
    """Node n leads or is a current follower of every vebus stream."""
    for stream in STREAMS:
        try:
            info = await js.stream_info(stream)
        except Exception:
            return False
        cluster = info.cluster
        if cluster is None:
            return False
        if node_number(cluster.leader) == n:
            continue
        peers = [p for p in cluster.replicas or [] if node_number(p.name) == n]
        if not peers or not peers[0].current or peers[0].offline:
            return False
    return True


async def kill_node(bus: Bus, js: JetStreamContext, n: int, fault: Fault) -> None:
    """SIGKILL node n and wait until `vebus up` restarted it and it has caught up."""
    cluster = bus.cluster
    pid = cluster.node_pid(n)
    assert pid is not None, f"nats-{n} is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new = cluster.node_pid(n)
        if new is not None and new != pid and await node_is_current(js, n):
            fault.recovered()
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"nats-{n} did not come back:\n{cluster.log(f'nats-{n}')[-2000:]}")


@pytest.mark.parametrize("form", FORMS)
async def test_nats_nodes_killed_one_after_another(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: Form
) -> None:
    led = ledger(f"NATS node kills ({form.events} events)", bus.sink(ROUTE))
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    producer = Producer(
        js, led, source=source(ROUTE), prefix=f"node{time.time_ns()}", count=form.events,
        rate=form.rate,
    )  # fmt: skip
    producing = asyncio.create_task(producer.run())
    await asyncio.sleep(2)
    last: int | None = None
    for k in range(form.kills):
        # the stream leaders first: that is where a failover has the most to do
        stream = names.ROUTES_STREAM if k % 2 == 0 else names.EVENTS_STREAM
        n = await leader_of(js, stream)
        if n is None or n == last:
            n = next(i for i in (1, 2, 3) if i != last)
        role = f"leader of {stream}" if n == await leader_of(js, stream) else "follower"
        fault = led.fault(f"SIGKILL nats-{n} ({role})")
        await kill_node(bus, js, n, fault)
        last = n
        await asyncio.sleep(1)
    await producing
    await settle(led, js, bus.sink(ROUTE), ROUTE, timeout=120)
    assert all(f.recovered_after is not None for f in led.faults)
    led.check()


ALL_AT_ONCE = [
    pytest.param(Form(events=1200, rate=100, kills=1), id="short"),
    # a rate whose backlog over a whole-cluster outage (about 15 s) stays well under the
    # route's limit (ROUTE_MAX_MSGS): at 150/s the first run dead-lettered 422 as ROUTE_FULL
    pytest.param(Form(events=6000, rate=60, kills=3), id="long", marks=pytest.mark.slow),
]


async def kill_all_nodes(bus: Bus, js: JetStreamContext, fault: Fault) -> None:
    """SIGKILL every NATS node at once; wait until `vebus up` restarted them all and each
    leads or follows every vebus stream again."""
    cluster = bus.cluster
    pids = {n: cluster.node_pid(n) for n in (1, 2, 3)}
    assert all(pids.values()), f"not every node is running: {pids}"
    for pid in pids.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        fresh = {n: cluster.node_pid(n) for n in pids}
        back = all(p is not None and p != pids[n] for n, p in fresh.items())
        if back and all([await node_is_current(js, n) for n in pids]):
            fault.recovered()
            return
        await asyncio.sleep(0.25)
    logs = "\n".join(cluster.log(f"nats-{n}")[-1500:] for n in pids)
    raise AssertionError(f"the cluster did not come back after losing every node:\n{logs}")


@pytest.mark.parametrize("form", ALL_AT_ONCE)
async def test_every_nats_node_killed_at_once(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: Form
) -> None:
    """All three nodes SIGKILLed together while events flow (a crash of every node, not a
    power loss: the page cache keeps what they wrote, see test_power_loss.py): the cluster
    comes back from its disks and no acknowledged event is lost."""
    led = ledger(f"every NATS node killed at once ({form.events} events)", bus.sink(ROUTE))
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    producer = Producer(
        js, led, source=source(ROUTE), prefix=f"all{time.time_ns()}", count=form.events,
        rate=form.rate,
    )  # fmt: skip
    producing = asyncio.create_task(producer.run())
    for k in range(form.kills):
        await asyncio.sleep(2 if k == 0 else 10)  # the backlog of the last outage drains
        fault = led.fault(f"SIGKILL nats-1, nats-2 and nats-3 at once ({producer.acked} acked)")
        await kill_all_nodes(bus, js, fault)
    await producing
    await bus.cluster.wait_all_ready()
    await settle(led, js, bus.sink(ROUTE), ROUTE, timeout=180)
    assert all(f.recovered_after is not None for f in led.faults)
    led.check()
