"""Another client's WaitForTask against a follower of vCenter's events (issue 16).

    uv run python -m loadtest.waitfortask [--cycles N] [--vms N] [--only raw|collector]

A driver session power-cycles VMs of the simulator one after the other with pyvmomi's
`WaitForTask` (which waits on its own session's default PropertyCollector), pausing
`--gap` seconds after each task, while a follower waits for `latestPage` updates:

- raw: a bare pyvmomi loop (WaitForUpdatesEx, page of 10) on the session's *default*
  PropertyCollector, then one on a PropertyCollector of its own
  (`CreatePropertyCollector()`), each against a fresh simulator;
- collector: the vebus collector process (one vCenter, `start: latest`), with nats-server;
  the event's arrival on a core NATS subscription to `vebus.events.sim.>`.

Reported per follower: each VmPoweredOffEvent/VmPoweredOnEvent's lag from WaitForTask's
return to the follower seeing it (p50, max, how many were not seen within `--grace`
seconds of the last task), and for the collector its watchdog's `resyncs` from /readyz.
Results: loadtest/results/waitfortask.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import yaml
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from loadtest.collector import _vc_state
from loadtest.common import machine, print_table, summary, write_results
from vebus.local.embedded import free_port, start_nats, start_service, start_vcsim, vcsim_binary

PAGE = 10
#: (vm moref, event class, monotonic time WaitForTask returned)
Op = tuple[str, str, float]
#: (vm moref, event class, monotonic time the follower saw it)
Seen = tuple[str, str, float]


def _login(url: str) -> Any:
    parts = urlsplit(url)
    return SmartConnect(
        host=parts.hostname, port=parts.port, user="user", pwd="pass", protocol="http"
    )


def drive(url: str, vms: int, cycles: int, gap: float) -> list[Op]:
    """Power-cycle `vms` VMs `cycles` times with WaitForTask; one Op per task."""
    si = _login(url)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        machines = sorted(view.view, key=lambda v: v.name)[:vms]
        ops: list[Op] = []
        for _ in range(cycles):
            for vm in machines:
                for task, cls in (
                    (vm.PowerOffVM_Task, "VmPoweredOffEvent"),
                    (vm.PowerOnVM_Task, "VmPoweredOnEvent"),
                ):
                    WaitForTask(task())
                    ops.append((str(vm._moId), cls, time.monotonic()))
                    time.sleep(gap)
        return ops
    finally:
        Disconnect(si)


def raw_follower(
    url: str, private: bool, seen: list[Seen], ready: threading.Event, stop: threading.Event
) -> None:
    """WaitForUpdatesEx on latestPage, on the default or on a private PropertyCollector."""
    si = _login(url)
    content = si.RetrieveContent()
    col = content.eventManager.CreateCollectorForEvents(vim.event.EventFilterSpec(maxCount=PAGE))
    pc = content.propertyCollector
    if private:
        pc = pc.CreatePropertyCollector()
    q = vmodl.query.PropertyCollector
    pc.CreateFilter(
        q.FilterSpec(
            objectSet=[q.ObjectSpec(obj=col)],
            propSet=[q.PropertySpec(type=vim.event.EventHistoryCollector, pathSet=["latestPage"])],
        ),
        partialUpdates=True,
    )
    version, last = "", None
    try:
        while not stop.is_set():
            update = pc.WaitForUpdatesEx(version, q.WaitOptions(maxWaitSeconds=1))
            if update is None:
                continue
            now = time.monotonic()
            version = update.version
            page = [
                e
                for fs in update.filterSet or []
                for obj in fs.objectSet or []
                for change in obj.changeSet or []
                for e in (change.val or [])
            ]
            for e in sorted(page, key=lambda e: e.key):
                if last is not None and e.key > last and e.vm is not None:
                    seen.append((str(e.vm.vm._moId), type(e).__name__.rsplit(".", 1)[-1], now))
            last = max([e.key for e in page] + [last or 0])
            ready.set()
    finally:
        if private:
            pc.DestroyPropertyCollector()
        Disconnect(si)


def lags(ops: list[Op], seen: list[Seen]) -> tuple[list[float], int]:
    """Each op's lag to the n-th sighting of its (vm, class); and how many were never seen."""
    pending: dict[tuple[str, str], list[float]] = {}
    for vm, cls, t in seen:
        pending.setdefault((vm, cls), []).append(t)
    out: list[float] = []
    missed = 0
    for vm, cls, t in ops:
        times = pending.get((vm, cls)) or []
        if times:
            out.append(times.pop(0) - t)
        else:
            missed += 1
    return out, missed


def _row(name: str, ops: list[Op], seen: list[Seen], resyncs: int | None = None) -> dict[str, Any]:
    values, missed = lags(ops, seen)
    s = summary(values)
    return {
        "follower": name,
        "tasks": len(ops),
        "seen": len(values),
        "missed": missed,
        "lag_p50_s": s["p50"],
        "lag_max_s": s["max"],
        "resyncs": resyncs,
        "lags_s": [round(v, 3) for v in values],
    }


def run_raw(binary: Path, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for private in (False, True):
        proc, url = start_vcsim(binary, log_path=workdir / f"vcsim-raw-{private}.log")
        try:
            seen: list[Seen] = []
            ready, stop = threading.Event(), threading.Event()
            t = threading.Thread(target=raw_follower, args=(url, private, seen, ready, stop))
            t.start()
            assert ready.wait(30), "the follower did not start"
            ops = drive(url, args.vms, args.cycles, args.gap)
            time.sleep(args.grace)
            stop.set()
            t.join(10)
            name = "raw, private PropertyCollector" if private else "raw, default PropertyCollector"
            rows.append(_row(name, ops, seen))
        finally:
            proc.stop()
    return rows


async def run_collector(binary: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    vcsim, url = start_vcsim(binary, log_path=workdir / "vcsim-collector.log")
    nats_proc, port = start_nats(workdir / "nats")
    health = free_port()
    config = workdir / "vebus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": f"nats://127.0.0.1:{port}"},
                "vcenters": [{"name": "sim", "url": url, "username": "user", "password": "pass"}],
            }
        )
    )
    collector = start_service(
        "collector", config, health_port=health, log_path=workdir / "collector.log"
    )
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while _vc_state(health, "sim").get("state") != "tailing":
            assert time.monotonic() < deadline, collector.output()[-3000:]
            await asyncio.sleep(0.2)
        seen: list[Seen] = []

        async def on_msg(msg: Any) -> None:
            now = time.monotonic()
            data = json.loads(msg.data or b"{}")
            vm = ((data.get("Vm") or {}).get("Vm") or {}).get("Value")
            if vm:
                seen.append((vm, msg.subject.rsplit(".", 1)[-1], now))

        await nc.subscribe("vebus.events.sim.>", cb=on_msg)
        ops = await asyncio.to_thread(drive, url, args.vms, args.cycles, args.gap)
        await asyncio.sleep(args.grace)
        state = _vc_state(health, "sim")
        return _row("vebus collector", ops, seen, resyncs=int(state.get("resyncs", 0)))
    finally:
        await nc.close()
        collector.stop()
        nats_proc.stop()
        vcsim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=2, help="VMs to power-cycle")
    parser.add_argument("--cycles", type=int, default=2, help="rounds over the VMs")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between tasks")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds to wait at the end")
    parser.add_argument("--only", choices=["raw", "collector"])
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vebus-waitfortask-") as tmp:
        workdir = Path(tmp)
        binary = vcsim_binary(Path(__file__).resolve().parents[1] / "build")
        if args.only in (None, "raw"):
            rows += run_raw(binary, workdir, args)
        if args.only in (None, "collector"):
            rows.append(asyncio.run(run_collector(binary, workdir, args)))
    print_table(
        "another client's WaitForTask vs a follower: lag from the task's end to the event",
        [{k: v for k, v in r.items() if k != "lags_s"} for r in rows],
    )
    for r in rows:
        print(f"{r['follower']}: lags {r['lags_s']}")
    path = write_results("waitfortask", {"env": machine(), "args": vars(args), "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
