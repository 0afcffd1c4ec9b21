"""SIGSTOP a dispatcher replica for longer than its route's ack_wait, then SIGCONT: what it
held is redelivered to the other replica meanwhile (nothing waits for the frozen one), and
when it wakes its late answers are at worst duplicates (lost = 0, no dead letters)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import SIGSTOP_ACK_WAIT, Bus, MakeLedger, source
from tests.support.ledger import Producer, settle, wait_until
from vebus import names

pytestmark = pytest.mark.chaos

ROUTE = "sigstop"


@dataclass(frozen=True)
class Form:
    events: int
    rate: float
    #: how long the dispatcher stays stopped, past the route's ack_wait
    beyond_ack_wait: float


FORMS = [
    pytest.param(Form(events=600, rate=50, beyond_ack_wait=3), id="short"),
    pytest.param(
        # 50/s: one replica alone delivers 80/s (16 in flight, the sink answers in 0.2s), so
        # the route's backlog stays far from route_max_msgs while the other one is stopped
        Form(events=3000, rate=50, beyond_ack_wait=30),
        id="long",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("form", FORMS)
async def test_a_stopped_dispatcher_is_redelivered_around(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: Form
) -> None:
    info = await js.consumer_info(names.ROUTES_STREAM, names.dispatcher_durable(ROUTE))
    assert info.config.ack_wait == SIGSTOP_ACK_WAIT
    led = ledger(
        f"dispatcher SIGSTOP {SIGSTOP_ACK_WAIT + form.beyond_ack_wait:.0f}s", bus.sink(ROUTE)
    )
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    sink = bus.sink(ROUTE)
    producer = Producer(
        js, led, source=source(ROUTE), prefix=f"stop{time.time_ns()}", count=form.events,
        rate=form.rate,
    )  # fmt: skip
    producing = asyncio.create_task(producer.run())
    await asyncio.sleep(2)
    replica = bus.cluster.of("dispatcher")[0]
    pid = bus.cluster.pid_of(replica)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    fault = led.fault(f"SIGSTOP {replica.label} (pid {pid})")
    try:
        # while it is stopped, everything sent is delivered: what the frozen replica held
        # comes back to the other one once ack_wait has passed
        await producing
        # (the long form produces for longer than ack_wait + beyond_ack_wait: its last
        # events, sent to the running replica, still get a few seconds)
        done = await wait_until(
            lambda: set(led.sent) <= set(sink.accepted_ids()),
            max(10.0, SIGSTOP_ACK_WAIT + form.beyond_ack_wait - (time.monotonic() - stopped)),
        )
        delivered_while_stopped = len(set(led.sent) & set(sink.accepted_ids()))
        # held: sent before the stop, yet (again) delivered only once ack_wait had passed
        late = sink_time(bus, stopped) + SIGSTOP_ACK_WAIT - 1
        again = {r.headers.get("ce-id") for r in sink.accepted if r.at > late}
        held = [i for i in led.sent if producer.acked_at[i] < stopped and i in again]
        await asyncio.sleep(max(0.0, stopped + SIGSTOP_ACK_WAIT + form.beyond_ack_wait
                                - time.monotonic()))  # fmt: skip
    finally:
        os.kill(pid, signal.SIGCONT)
        fault.recovered()
    led.note(
        f"delivered while {replica.label} was stopped: {delivered_while_stopped} of "
        f"{len(led.sent)}; {len(held)} of them redelivered after ack_wait (held by it)"
    )
    await settle(led, js, sink, ROUTE, timeout=60)
    assert done, led.report()
    assert held, "the stopped replica held no message: the test proved nothing\n" + led.report()
    assert bus.cluster.pid_of(replica) == pid, "the stopped replica was not restarted"
    led.check()


def sink_time(bus: Bus, monotonic: float) -> float:
    """`monotonic` on the sinks' event loop clock (Received.at)."""
    return bus.hub.loop.time() - (time.monotonic() - monotonic)
