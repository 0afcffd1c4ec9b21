"""Several vCenters in one collector, each followed on its own; a session that vCenter ends
is replaced by a new login; enrichment adds the VM's ids."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import RawStreamMsg

from tests.conftest import Vcsim
from tests.support.collector import (
    readyz,
    start_replica,
    stream_keys,
    vcenter_state,
    wait_until,
)
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from tests.support.vsphere import VSphere
from vebus.local.embedded import free_port, start_vcsim
from vebus.names import EVENTS_STREAM

pytestmark = pytest.mark.integration


def _vc(name: str, url: str, **extra: object) -> dict[str, object]:
    return {"name": name, "url": url, "username": "user", "password": "pass", **extra}


async def test_two_simulators_are_both_delivered_and_a_dead_one_stops_neither(
    stack: Stack, nc: Client, vcsim: Vcsim, vcsim_binary: Path, tmp_path: Path
) -> None:
    second, url2 = start_vcsim(vcsim_binary, log_path=tmp_path / "vcsim2.log")
    dead = f"http://127.0.0.1:{free_port()}/sdk"  # nothing listens there
    try:
        stack.write_config(
            {"vcenters": [_vc("vc1", vcsim.url), _vc("vc2", url2), _vc("vc3", dead)]}
        )
        port = start_replica(stack, "collector")
        proc = stack.procs["collector"]
        for name in ("vc1", "vc2"):
            await wait_until(
                lambda n=name: vcenter_state(port, n).get("state") == "tailing", 30, name, proc
            )
        await wait_until(
            lambda: (
                vcenter_state(port, "vc3").get("state") in ("unreachable", "connecting")
                and "Connection refused" in str(vcenter_state(port, "vc3").get("error"))
            ),
            30,
            "vc3 reported unreachable",
            proc,
        )
        status, body = readyz(port)
        assert status == 503, "not ready while a vCenter cannot be reached"
        assert body["vcenters"]["vc1"]["role"] == "active"

        vs1, vs2 = (
            await asyncio.to_thread(VSphere, vcsim.url),
            await asyncio.to_thread(VSphere, url2),
        )
        try:
            await asyncio.to_thread(vs1.post_events, 5, "to vc1")
            await asyncio.to_thread(vs2.post_events, 7, "to vc2")
            for name, vs in (("vc1", vs1), ("vc2", vs2)):
                newest = await asyncio.to_thread(vs.newest_key)

                async def arrived(n: str = name, k: int = newest) -> bool:
                    return k in await stream_keys(nc, n)

                deadline = time.monotonic() + 30
                while not await arrived():
                    assert time.monotonic() < deadline, f"{name}: key {newest} not published"
                    await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(vs1.close)
            await asyncio.to_thread(vs2.close)
        # both simulators report the same instanceUuid: the config's name tells them apart
        for name, url, text in (("vc1", vcsim.url, "to vc1"), ("vc2", url2, "to vc2")):
            msgs = await stream_messages(nc, EVENTS_STREAM, f"vebus.events.{name}.>")
            assert {(m.headers or {})["ce-source"] for m in msgs} == {url}
            assert sum(text.encode() in (m.data or b"") for m in msgs) == (
                5 if name == "vc1" else 7
            )
        assert not await stream_keys(nc, "vc3")
    finally:
        second.stop()


async def test_a_terminated_session_logs_in_again_and_events_are_enriched(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    stack.write_config({"vcenters": [_vc("vc1", vcsim.url, enrich=True)]})
    await asyncio.to_thread(stack.start, "collector")
    port = stack.health["collector"]
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        vm = next(v for v in await asyncio.to_thread(vs.vms) if v.runtime.powerState == "poweredOn")
        await asyncio.to_thread(vs.power_off, vm)
        off = await _wait_for_event(nc, "VmPoweredOffEvent")
        h = off.headers or {}
        assert h["ce-vsphereobjecttype"] == "VirtualMachine"
        assert h["ce-vsphereobjectid"] == vm._moId
        assert h["ce-vminstanceuuid"] == vm.config.instanceUuid
        assert h["ce-vmbiosuuid"] == vm.config.uuid

        # vCenter ends the collector's session (an admin, an expiry): it logs in again
        await asyncio.sleep(3.5)  # past the re-login grace after its first login
        sm = vs.content.sessionManager
        mine = sm.currentSession.key
        others = [s.key for s in sm.sessionList if s.key != mine]
        assert others, "the collector's session is listed"
        await asyncio.to_thread(sm.TerminateSession, others)
        await asyncio.to_thread(vs.post_events, 3, "after terminate")
        newest = await asyncio.to_thread(vs.newest_key)
        deadline = time.monotonic() + 30
        # the new events may come with the old session's last update, before the collector
        # notices the session is gone: it is back to tailing on a new one in the end
        while not (
            newest in await stream_keys(nc, "vc1")
            and "logging in again" in stack.procs["collector"].output()
            and vcenter_state(port, "vc1").get("state") == "tailing"
        ):
            assert time.monotonic() < deadline, stack.logs()
            await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(vs.close)


async def _wait_for_event(nc: Client, cls: str, timeout: float = 30) -> RawStreamMsg:
    deadline = time.monotonic() + timeout
    while True:
        msgs = await stream_messages(nc, EVENTS_STREAM, f"vebus.events.vc1.{cls}")
        if msgs:
            return msgs[-1]
        assert time.monotonic() < deadline, f"no {cls}"
        await asyncio.sleep(0.2)
