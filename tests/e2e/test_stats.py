"""`vebus stats` over the events of a `vebus demo` run shows the counts the demo made."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.conftest import Vcsim
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus.names import EVENTS_STREAM

pytestmark = pytest.mark.e2e

VEBUS = str(Path(sys.executable).parent / "vebus")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VEBUS, *args], capture_output=True, text=True, timeout=120, check=False)


async def test_stats_counts_what_the_demo_did(
    stack: Stack, nc: Client, vcsim: Vcsim, tmp_path: Path
) -> None:
    stack.write_config(
        {"vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass",
                       "start": "earliest"}]}
    )  # fmt: skip
    await asyncio.to_thread(stack.start, "collector")
    demo = await asyncio.to_thread(_run, "demo", "--url", vcsim.url, "--vms", "2")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.count("powered off") == 2

    async def reconfigured() -> int:
        msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.vc1.VmReconfiguredEvent")
        return len(msgs)

    for _ in range(150):
        if await reconfigured() == 2:
            break
        await asyncio.sleep(0.2)
    png = tmp_path / "stats.png"
    out = await asyncio.to_thread(
        _run, "stats", "--config", str(stack.config_path), "--since", "1h", "--json",
        "--png", str(png),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    types = {row["name"]: row["events"] for row in doc["by_type"]}
    # the simulator's start: 4 VMs created and powered on; the demo: 2 off, 2 on, 2 reconfigured
    assert types["VmPoweredOffEvent"] == 2
    assert types["VmPoweredOnEvent"] == 4 + 2
    assert types["VmReconfiguredEvent"] == 2
    assert types["VmCreatedEvent"] == 4
    pairs = {d["pair"]: d for d in doc["durations"]}
    assert pairs["VmStoppingEvent -> VmPoweredOffEvent"]["count"] == 2
    assert pairs["VmStartingEvent -> VmPoweredOnEvent"]["count"] == 4 + 2
    assert doc["total"] == sum(r["events"] for r in doc["by_hour"])
    # every event the simulator's sessions caused carries its user name
    assert doc["by_user"][0]["name"] == "user"
    assert doc["by_user"][0]["events"] >= types["UserLoginSessionEvent"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = await asyncio.to_thread(
        _run, "stats", "--config", str(stack.config_path), "--since", "1h"
    )
    assert table.returncode == 0, table.stderr
    assert "VmPoweredOffEvent" in table.stdout

    bad = await asyncio.to_thread(_run, "stats", "--since", "yesterday-ish")
    assert bad.returncode == 2
    assert "expected an RFC 3339 time" in bad.stderr
