"""Scheduled checks in a real collector process against vcsim: one event per condition,
a Cleared event when it ends, state that survives a restart, one event however many
replicas run."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from nats.aio.client import Client
from pyVim.task import WaitForTask

from tests.conftest import Vcsim
from tests.support.collector import start_replica, wait_until
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from tests.support.vsphere import VSphere
from vebus.names import EVENTS_STREAM

pytestmark = pytest.mark.integration

CHECK = "com.vebus.check."


def _config(vcsim: Vcsim, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass"}],
        "checks": checks,
    }


async def _check_events(nc: Client) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(type, data, headers) of every check event in VEBUS_EVENTS, in order."""
    msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.checks.>")
    return [
        ((m.headers or {})["ce-type"], json.loads(m.data or b"{}"), dict(m.headers or {}))
        for m in msgs
    ]


async def _wait_types(nc: Client, stack: Stack, want: Counter[str], timeout: float = 30) -> None:
    async def ok() -> bool:
        got = Counter(t for t, _, _ in await _check_events(nc))
        return all(got[k] >= n for k, n in want.items())

    deadline = asyncio.get_running_loop().time() + timeout
    while not await ok():
        if asyncio.get_running_loop().time() > deadline:
            got = Counter(t for t, _, _ in await _check_events(nc))
            raise AssertionError(f"wanted {dict(want)}, got {dict(got)}\n{stack.logs()}")
        await asyncio.sleep(0.3)


async def test_snapshot_and_powered_off_raise_once_and_clear(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    stack.write_config(
        _config(
            vcsim,
            [
                {"kind": "snapshot_age", "name": "old-snapshots", "threshold": "1s",
                 "interval": "1s", "scope": {"names": ["DC0_H0_*"]}},
                {"kind": "vm_powered_off", "name": "off-too-long", "threshold": "1s",
                 "interval": "1s", "scope": {"vcenters": ["vc1"], "datacenters": ["DC0"]}},
            ],
        )
    )  # fmt: skip
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        vms = {v.name: v for v in await asyncio.to_thread(vs.vms)}
        snapped, outside, off = vms["DC0_H0_VM0"], vms["DC0_C0_RP0_VM0"], vms["DC0_H0_VM1"]
        for vm in (snapped, outside):  # `outside` does not match scope.names
            await asyncio.to_thread(
                lambda vm=vm: WaitForTask(
                    vm.CreateSnapshot_Task("before-upgrade", "", False, False)
                )
            )
        await asyncio.to_thread(vs.power_off, off)
        await asyncio.to_thread(stack.start, "collector")
        await _wait_types(
            nc,
            stack,
            Counter({CHECK + "SnapshotAgeExceeded.v0": 1, CHECK + "VmPoweredOffTooLong.v0": 1}),
        )
        await asyncio.sleep(3)  # three more rounds: still one event per condition
        events = await _check_events(nc)
        assert Counter(t for t, _, _ in events) == {
            CHECK + "SnapshotAgeExceeded.v0": 1,
            CHECK + "VmPoweredOffTooLong.v0": 1,
        }, stack.logs()
        snap = next(e for e in events if "SnapshotAge" in e[0])
        _, data, headers = snap
        assert headers["ce-source"] == vcsim.url
        assert headers["ce-subject"] == "SnapshotAgeExceeded"
        assert headers["ce-vebuscheck"] == "old-snapshots"
        assert headers["Nats-Msg-Id"] == f"check:{headers['ce-id']}"
        assert headers["ce-id"].startswith(f"old-snapshots:vc1:{snapped._moId}/snapshot-")
        assert data["Vm"] == {"Name": snapped.name,
                              "Vm": {"Type": "VirtualMachine", "Value": snapped._moId}}  # fmt: skip
        assert data["Object"] == {"Type": "VirtualMachine", "Value": snapped._moId}
        assert data["Snapshot"]["Name"] == "before-upgrade"
        assert data["Snapshot"]["Snapshot"]["Type"] == "VirtualMachineSnapshot"
        assert data["Datacenter"]["Name"] == "DC0"
        assert data["Threshold"] == 1.0
        assert data["Unit"] == "seconds"
        assert data["Value"] > 1
        assert data["VCenter"] == "vc1"
        assert "before-upgrade" in data["FullFormattedMessage"]
        _, data, headers = next(e for e in events if "PoweredOff" in e[0])
        assert data["Vm"]["Name"] == off.name
        assert data["PoweredOffSinceKnown"] is True

        # the conditions end: the snapshot is removed, the VM powered on
        await asyncio.to_thread(lambda: WaitForTask(snapped.RemoveAllSnapshots_Task()))
        await asyncio.to_thread(vs.power_on, off)
        await _wait_types(
            nc,
            stack,
            Counter(
                {
                    CHECK + "SnapshotAgeExceededCleared.v0": 1,
                    CHECK + "VmPoweredOffTooLongCleared.v0": 1,
                }
            ),
        )
        events = await _check_events(nc)
        cleared = next(e for e in events if e[0].endswith("SnapshotAgeExceededCleared.v0"))
        assert cleared[2]["ce-id"] == snap[2]["ce-id"] + ":cleared"
        assert cleared[1]["ClearedTime"] is not None
        assert cleared[1]["Since"] == snap[1]["Since"]
        await asyncio.sleep(2)
        assert len(await _check_events(nc)) == 4, stack.logs()
    finally:
        await asyncio.to_thread(vs.close)


async def test_state_survives_a_restart_and_replicas_do_not_duplicate(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    # a datastore's condition starts when a collector first sees it (vSphere keeps no
    # time for it), so a collector that forgot its state would report it again with a
    # new Msg-Id: the stream would hold two events
    checks: list[dict[str, Any]] = [
        {"kind": "datastore_usage", "name": "ds-full", "threshold": 1, "interval": "1s"},
        {"kind": "datastore_usage", "name": "ds-none", "threshold": 1, "interval": "1s",
         "scope": {"exclude": ["LocalDS_*"]}},
    ]  # fmt: skip
    stack.write_config(_config(vcsim, checks))
    await asyncio.to_thread(stack.start, "collector")
    second = start_replica(stack, "collector-2")
    await _wait_types(nc, stack, Counter({CHECK + "DatastoreUsageExceeded.v0": 1}))
    ((_, data, headers),) = await _check_events(nc)
    assert data["Ds"]["Name"].startswith("LocalDS_")
    assert data["Unit"] == "percent"
    assert data["Threshold"] == 1.0
    assert 1 < data["Value"] < 100
    assert data["CapacityBytes"] > data["FreeSpaceBytes"] > 0
    assert headers["ce-vebuscheck"] == "ds-full"

    # the active replica stops: the other takes over, reads the state, reports nothing new
    assert stack.stop("collector") == 0
    await wait_until(
        lambda: "now active" in stack.procs["collector-2"].output(),
        30,
        "the standby took over",
    )
    await asyncio.sleep(2.5)  # two rounds or more
    assert len(await _check_events(nc)) == 1, stack.logs()
    assert second

    # a higher threshold: the condition clears, with the same start as it was raised
    checks[0]["threshold"] = 99
    stack.write_config(_config(vcsim, checks))
    stack.stop("collector-2")
    await asyncio.to_thread(stack.restart, "collector")
    await _wait_types(nc, stack, Counter({CHECK + "DatastoreUsageExceededCleared.v0": 1}))
    raised, cleared = await _check_events(nc)
    assert cleared[1]["Since"] == raised[1]["Since"]
    assert cleared[2]["ce-id"] == raised[2]["ce-id"] + ":cleared"
    assert "back under" in cleared[1]["FullFormattedMessage"]
