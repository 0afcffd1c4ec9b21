"""`vebus status` finds every replica through NATS micro-service discovery: two collectors
(one holds the vCenter's lease), a filter, two dispatchers and a deadletter, as processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vcsim
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.local.embedded import free_port, start_service

pytestmark = pytest.mark.e2e

VEBUS = str(Path(sys.executable).parent / "vebus")


def _status(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEBUS, "status", "--config", str(stack.config_path), "--interval", "0.5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_status_shows_every_replica_and_the_lease_holder(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink
) -> None:
    stack.write_config(
        {
            "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "u", "password": "p"}],
            "routes": [
                {
                    "name": "vm-off",
                    "match": {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
                    "sink": {"kind": "webhook", "url": sink.url},
                }
            ],
        }
    )
    await asyncio.to_thread(stack.start)
    for name in ("dispatcher", "collector"):  # a second replica of each
        port = free_port()
        stack.health[f"{name}-2"] = port
        stack.procs[f"{name}-2"] = start_service(
            name, stack.config_path, health_port=port, log_path=stack.workdir / f"{name}-2.log"
        )
        await asyncio.to_thread(stack.wait_ready, f"{name}-2")

    def power_off() -> None:
        vs = VSphere(vcsim.url)
        try:
            vs.power_off(next(v for v in vs.vms() if v.runtime.powerState == "poweredOn"))
        finally:
            vs.close()

    await asyncio.to_thread(power_off)
    assert await sink.wait_for(lambda: len(sink.accepted) == 1, timeout=60), stack.logs()

    out = await asyncio.to_thread(_status, stack, "--json")
    assert out.returncode == 0, out.stderr
    status: dict[str, Any] = json.loads(out.stdout)
    services = [r for r in status["services"] if not r.get("gone")]
    assert Counter(r["service"] for r in services) == {
        "collector": 2, "filter": 1, "dispatcher": 2, "deadletter": 1,
    }, services  # fmt: skip
    assert all(r["ready"] for r in services), services
    dispatchers = [r for r in services if r["service"] == "dispatcher"]
    assert {r["health_port"] for r in dispatchers} == {
        stack.health["dispatcher"],
        stack.health["dispatcher-2"],
    }
    assert len({r["instance"] for r in services}) == 6
    assert sum(r["counters"]["delivered"] for r in dispatchers) == 1
    # one collector holds the lease of vc1, the other stands by
    lease = status["collectors"]["vc1"]
    collectors = {r["instance"] for r in services if r["service"] == "collector"}
    assert lease["active"] in collectors
    assert lease["standby"] == list(collectors - {lease["active"]})
    assert lease["state"] == "tailing"
    # streams and each consumer's backlog
    streams = {s["name"]: s for s in status["streams"]}
    assert streams["VEBUS_EVENTS"]["messages"] >= 1
    consumers = {c["name"]: c for c in status["consumers"]}
    assert consumers["vebus-filter"]["num_pending"] == 0
    assert consumers["vebus-dispatch-vm-off"]["ack_pending"] == 0
    assert status["dead_letters"]["total"] == 0
    assert "delivered_per_s" in status["rates"]

    # the screen for people: one line per replica
    text = await asyncio.to_thread(_status, stack)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("dispatcher ") >= 2, text.stdout
    assert "vebus-dispatch-vm-off" in text.stdout
    assert "active: vc1" in text.stdout
