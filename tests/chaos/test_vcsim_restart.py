"""The vCenter simulator SIGKILLed mid-run and restarted by `vebus up` (a vCenter whose
event keys start again: a new epoch): the collector reconnects, and the events posted
after the restart arrive, as do those posted before."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import Bus, MakeLedger
from tests.support.ledger import settle, wait_until
from tests.support.sink import Received
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.chaos

ROUTE = "vcsim"

FORMS = [
    pytest.param((1, 20), id="short"),
    pytest.param((3, 200), id="long", marks=pytest.mark.slow),
]


def message_of(r: Received) -> str:
    try:
        return str(json.loads(r.body).get("Message", ""))
    except ValueError:
        return ""


def post(url: str, count: int, message: str) -> list[str]:
    """Post `count` GeneralUserEvents; returns their messages (the ledger's keys)."""
    vs = VSphere(url)
    try:
        vs.post_events(count, message)
    finally:
        vs.close()
    return [f"{message} {i}" for i in range(count)]


def connectable(url: str) -> bool:
    try:
        VSphere(url).close()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("form", FORMS)
async def test_vcsim_killed_and_restarted(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: tuple[int, int]
) -> None:
    restarts, per_phase = form
    cluster, sink = bus.cluster, bus.sink(ROUTE)
    led = ledger(f"vcsim killed {restarts}x", sink)
    led.max_ack_pending = await bus.max_ack_pending(js, ROUTE)
    run = time.time_ns()

    def delivered() -> set[str]:
        return {message_of(r) for r in sink.accepted}

    def arrived(messages: list[str]) -> Callable[[], bool]:
        return lambda: set(messages) <= delivered()

    def restarted(old: int) -> Callable[[], bool]:
        return lambda: cluster.vcsim_pid() not in (None, old)

    led.sent += await asyncio.to_thread(post, cluster.vcsim_url, per_phase, f"chaos-vcsim-{run}-0")
    assert await wait_until(arrived(led.sent), 60), "before the kill"
    for k in range(1, restarts + 1):
        pid = cluster.vcsim_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        fault = led.fault(f"SIGKILL vcsim (pid {pid}); back when events posted after it arrive")
        assert await wait_until(restarted(pid), 60), cluster.up_log()[-2000:]
        assert await wait_until(lambda: connectable(cluster.vcsim_url), 60)
        after = await asyncio.to_thread(
            post, cluster.vcsim_url, per_phase, f"chaos-vcsim-{run}-{k}"
        )
        led.sent += after
        if await wait_until(arrived(after), 120):
            fault.recovered()
    await settle(led, js, sink, ROUTE, timeout=30, key=message_of)
    led.check()
