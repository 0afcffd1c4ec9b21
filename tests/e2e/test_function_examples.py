"""Every ready-made function in examples/functions/ against the vCenter simulator: the
collector, filter and functions service run the examples' own files (their `functions:`,
`routes:` and `checks:` together in one config, each function's folder as shipped), the
vSphere action is done in vcsim, and the result is read back from vcsim (pyvmomi, the
tagging REST API) or from the real HTTP server a function calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from tests.conftest import REPO
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.config import VCenterEndpoint
from vebus.local.embedded import start_nats, start_vcsim
from vebus_functions.tagging import Tagging

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples" / "functions"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "vebus.yaml").is_file())


def merged() -> dict[str, Any]:
    """The examples' files as one config: the first file's vCenter, every function (its
    workdir made absolute: the example's folder), route and check."""
    out: dict[str, Any] = {"functions": [], "routes": [], "checks": []}
    for name in NAMES:
        raw = yaml.safe_load((EXAMPLES / name / "vebus.yaml").read_text())
        out["nats"] = raw["nats"]
        if not out.get("vcenters"):
            out["vcenters"] = raw.get("vcenters")
        for fn in raw.get("functions") or []:
            out["functions"].append(
                {**fn, "workdir": str(EXAMPLES / name / fn.get("workdir", "."))}
            )
        out["routes"] += raw.get("routes") or []
        out["checks"] += raw.get("checks") or []
    return out


class World:
    def __init__(self, stack: Stack, vcsim_url: str, tickets: RecordingSink) -> None:
        self.stack, self.vcsim_url, self.tickets = stack, vcsim_url, tickets
        self.vs = VSphere(vcsim_url)
        self.tagging = Tagging(
            VCenterEndpoint(url=vcsim_url, username="user", password="pass"), "pass",
            ssl.create_default_context(), "test",
        )  # fmt: skip


class _Tickets:
    """The ticket system: a RecordingSink on a loop of its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sink = asyncio.run_coroutine_threadsafe(RecordingSink().start(), self.loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


ENV = {
    "VC_USER": "user",
    "VC_PASSWORD": "pass",
    "TICKET_TOKEN": "t1cket-t0ken",
    "SNAPSHOT_MAX_AGE": "1s",
    "SNAPSHOT_CHECK_INTERVAL": "1s",
    "VC_CERTIFICATE_CHECK": "false",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, vcsim_binary: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("examples")
    nats_proc, port = start_nats(root / "nats")
    vcsim_proc, vcsim_url = start_vcsim(vcsim_binary, log_path=root / "vcsim.log")
    tickets = _Tickets()
    stack = Stack(root, f"nats://127.0.0.1:{port}")
    stack.config_path = root / "vebus.yaml"
    stack.config_path.write_text(yaml.safe_dump(merged(), sort_keys=False))
    saved = dict(os.environ)
    os.environ.update(ENV, NATS_URL=stack.nats_url, VC_URL=vcsim_url,
                      TICKET_URL=tickets.sink.url)  # fmt: skip
    try:
        stack.start("collector", "filter", "functions", ready_timeout=60)
        os.environ.clear()
        os.environ.update(saved)
        w = World(stack, vcsim_url, tickets.sink)
        yield w
        w.vs.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for p in stack.procs.values():
            p.stop()
        tickets.stop()
        vcsim_proc.stop()
        nats_proc.kill()


def eventually(what: str, world: World, probe: Callable[[], Any], timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{world.stack.logs()}")
        time.sleep(0.3)


def new_vm(vs: VSphere, name: str) -> Any:
    """CreateVM_Task in the simulator: it posts VmCreatedEvent, as vCenter does."""
    host = vs.content.viewManager.CreateContainerView(
        vs.content.rootFolder, [vim.HostSystem], True
    ).view[0]
    datacenter = vs.content.rootFolder.childEntity[0]
    spec = vim.vm.ConfigSpec(name=name, numCPUs=1, memoryMB=128, guestId="otherGuest",
                             files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"))  # fmt: skip
    task = datacenter.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host)
    WaitForTask(task)
    return task.info.result


def has_snapshot(vs: VSphere, vm: Any) -> bool:
    """Whether `vm` has a snapshot (read with RetrieveContents: the simulator's Fetch of an
    unset property fails, so `vm.snapshot` cannot say None)."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=vm)],
        propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot"])],
    )
    found = vs.content.propertyCollector.RetrieveContents([spec])
    return any(p.val is not None for o in found for p in o.propSet)


def test_each_example_passes_config_check_as_shipped() -> None:
    vebus = str(Path(sys.executable).parent / "vebus")
    for name in NAMES:
        run = subprocess.run([vebus, "config", "check", str(EXAMPLES / name / "vebus.yaml")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, (name, run.stdout, run.stderr)


def test_new_vms_are_tagged_and_hardened(world: World) -> None:
    vm = new_vm(world.vs, "fresh-vm-1")
    ref = {"Type": "VirtualMachine", "Value": vm._moId}
    tags = eventually("the tag", world, lambda: world.tagging.names_of(ref))
    assert tags == ["lifecycle/new-vm"]
    profile = json.loads((EXAMPLES / "harden-new-vms" / "profiles.json").read_text())["baseline"]

    def hardened() -> bool:
        have = {o.key: str(o.value) for o in vm.config.extraConfig or []}
        return all(have.get(k) == v for k, v in profile.items())

    eventually("the hardening profile", world, hardened)


def test_a_host_added_to_vcenter_is_tagged(world: World) -> None:
    host = world.vs.content.viewManager.CreateContainerView(
        world.vs.content.rootFolder, [vim.HostSystem], True
    ).view[-1]
    # the simulator posts no HostAddedEvent (AddStandaloneHost_Task makes none): post it
    world.vs.content.eventManager.PostEvent(
        vim.event.HostAddedEvent(
            createdTime=dt.datetime.now(dt.UTC), key=0, chainId=0, userName="admin",
            host=vim.event.HostEventArgument(name=host.name, host=host),
            datacenter=vim.event.DatacenterEventArgument(
                name="DC0", datacenter=world.vs.content.rootFolder.childEntity[0]),
        )
    )  # fmt: skip
    ref = {"Type": "HostSystem", "Value": host._moId}
    assert eventually("the host's tag", world, lambda: world.tagging.names_of(ref)) == [
        "lifecycle/new-host"
    ]


def test_a_powered_off_vm_gets_a_ticket_with_vcenter_details_and_a_veba_annotation(
    world: World,
) -> None:
    vm = next(v for v in world.vs.vms() if v.runtime.powerState == "poweredOn")
    fields = world.vs.content.customFieldsManager
    field = next((f for f in fields.field or [] if f.name == "owner"), None) or (
        fields.AddCustomFieldDef(name="owner", moType=vim.VirtualMachine)
    )
    fields.SetField(entity=vm, key=field.key, value="team-db@example.com")
    world.vs.power_off(vm)
    received = eventually(
        "the ticket", world,
        lambda: [r for r in world.tickets.accepted if r.json().get("vm") == vm.name],
    )  # fmt: skip
    ticket = received[0].json()
    assert received[0].headers["Authorization"] == "Bearer t1cket-t0ken"
    assert ticket["host"] == vm.runtime.host.name
    assert ticket["datastores"] == sorted(ds.name for ds in vm.datastore)
    assert ticket["owner"] == "team-db@example.com"
    assert ticket["power_state"] == "poweredOff"
    note = eventually("the VEBA function's annotation", world,
                      lambda: (vm.config.annotation or "").startswith("powered off by") and
                      vm.config.annotation)  # fmt: skip
    assert "powered off by" in note


def test_old_snapshots_are_removed_and_a_dry_run_removes_none(world: World) -> None:
    vms = [v for v in world.vs.vms() if v.runtime.powerState == "poweredOn"]
    doomed, kept = vms[0], vms[1]
    WaitForTask(kept.Rename_Task(newName=f"{kept.name}-template"))  # out of the check's scope
    WaitForTask(kept.CreateSnapshot_Task(name="keep", memory=False, quiesce=False))
    WaitForTask(doomed.CreateSnapshot_Task(name="old", memory=False, quiesce=False))
    eventually("the removal", world, lambda: not has_snapshot(world.vs, doomed), timeout=60)
    # the dry run: the same function, once, on a check event for the snapshot kept
    snap = kept.snapshot.rootSnapshotList[0]
    event = {
        "specversion": "1.0", "id": "dry-1", "source": world.vcsim_url,
        "type": "com.vebus.check.SnapshotAgeExceeded.v0", "datacontenttype": "application/json",
        "data": {"Vm": {"Name": kept.name, "Vm": {"Type": "VirtualMachine",
                                                  "Value": kept._moId}},
                 "Snapshot": {"Name": "keep", "Snapshot": {"Type": "VirtualMachineSnapshot",
                                                           "Value": snap.snapshot._moId}},
                 "Value": 400000.0},
    }  # fmt: skip
    event_file = world.stack.workdir / "dry-run-event.json"
    event_file.write_text(json.dumps(event))
    env = {**os.environ, **ENV, "VC_URL": world.vcsim_url, "DRY_RUN": "true"}
    run = subprocess.run(
        [str(Path(sys.executable).parent / "vebus"), "fn", "test", "snapshot-cleanup",
         "--event", str(event_file), "--json",
         "--config", str(EXAMPLES / "snapshot-cleanup" / "vebus.yaml")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["replies"][0]["data"] == {"vm": kept.name, "snapshot": "keep",
                                            "removed": False, "dry_run": True}  # fmt: skip
    assert has_snapshot(world.vs, kept)
