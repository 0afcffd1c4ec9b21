"""Blocking inventory reads for the scheduled checks: what is over a threshold right now.

Each probe returns one Finding per object whose measured value is past the check's
threshold (or, for a datastore with `clear_below`, still past the clearing level). Every
function here blocks on pyvmomi: call them in a worker thread.

Inventory is read with one PropertyCollector pass per datacenter over a ContainerView
(only the properties a check needs), not object by object.

"Powered off since when": vSphere keeps no power-off time on the VM. A VM that is
`runtime.powerState == poweredOff` is taken to be off since its latest VmPoweredOffEvent
(or DrsVmPoweredOffEvent) in vCenter's event history; a VM with no such event in the
history (vCenter keeps events for a limited time, 30 days by default) is taken to be off
since the oldest event vCenter has, a lower bound, flagged `PoweredOffSinceKnown: false`.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from pyVmomi import VmomiSupport, vim, vmodl

from vebus.config import (
    Check,
    CheckScope,
    DatastoreUsageCheck,
    SnapshotAgeCheck,
    VmPoweredOffCheck,
)
from vebus_collector.mapping import rfc3339

__all__ = ["POWER_OFF_EVENTS", "Finding", "MoRef", "probe"]

#: the event classes whose latest one says since when a VM is powered off
POWER_OFF_EVENTS = ("VmPoweredOffEvent", "DrsVmPoweredOffEvent")
#: objects per RetrievePropertiesEx page
_PAGE = 1000
#: events per ReadNextEvents call
_EVENT_PAGE = 1000
_wsdl_name: Callable[[type], str] = VmomiSupport.GetWsdlName


class MoRef(msgspec.Struct, frozen=True):
    """A managed object reference as VEBA writes it."""

    Type: str
    Value: str


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One object past a check's threshold, as measured now."""

    #: the condition's identity within its check and vCenter (a moref, or VM/snapshot)
    key: str
    object: MoRef
    name: str
    #: the measured value: seconds (ages) or percent (datastore usage)
    value: float
    #: when the condition began, when that follows from vSphere's own data (else None:
    #: the first time a collector saw it)
    since: str | None = None
    #: True: past the threshold; False: only past `clear_below` (holds an open condition)
    over: bool = True
    #: VEBA-style entity fields for the event data (Vm, Ds, Datacenter, Snapshot, ...)
    data: dict[str, Any] = msgspec.field(default_factory=dict)


def probe(si: Any, check: Check, now: dt.datetime) -> list[Finding]:
    """The findings of `check` on the vCenter behind `si` at `now` (blocking)."""
    if isinstance(check, SnapshotAgeCheck):
        return _snapshot_age(si, check, now)
    if isinstance(check, DatastoreUsageCheck):
        return _datastore_usage(si, check)
    return _vm_powered_off(si, check, now)


def in_scope(scope: CheckScope, name: str) -> bool:
    """True when `name` matches the scope's `names` (or there are none) and no `exclude`."""
    if scope.names and not any(fnmatch.fnmatchcase(name, p) for p in scope.names):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in scope.exclude)


def _ref(obj: Any) -> MoRef:
    # the WSDL name (VirtualMachineSnapshot), as VEBA writes it, not pyVmomi's (vm.Snapshot)
    return MoRef(Type=_wsdl_name(type(obj)), Value=str(obj._moId))


def _datacenters(si: Any, scope: CheckScope) -> Iterator[tuple[Any, str]]:
    """The datacenters in scope, with their names."""
    for dc, props in _collect(si, si.content.rootFolder, vim.Datacenter, ["name"]):
        name = str(props.get("name", ""))
        if not scope.datacenters or name in scope.datacenters:
            yield dc, name


def _collect(si: Any, root: Any, kind: Any, paths: list[str]) -> list[tuple[Any, dict[str, Any]]]:
    """(object, {path: value}) for every `kind` object under `root`, paged."""
    content = si.content
    view = content.viewManager.CreateContainerView(root, [kind], True)
    pc: Any = vmodl.query.PropertyCollector
    try:
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pc.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[pc.PropertySpec(type=kind, pathSet=paths)],
        )
        out: list[tuple[Any, dict[str, Any]]] = []
        result = content.propertyCollector.RetrievePropertiesEx(
            [spec], pc.RetrieveOptions(maxObjects=_PAGE)
        )
        while result is not None:
            for obj in result.objects or []:
                out.append((obj.obj, {p.name: p.val for p in obj.propSet or []}))
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return out
    finally:
        view.Destroy()


def _entity(field: str, name: str, obj: Any) -> dict[str, Any]:
    """`{"Name": ..., "<field>": {"Type", "Value"}}` as in VEBA's entity arguments."""
    return {"Name": name, field: msgspec.to_builtins(_ref(obj))}


def _snapshot_age(si: Any, check: SnapshotAgeCheck, now: dt.datetime) -> list[Finding]:
    found: list[Finding] = []
    for dc, dc_name in _datacenters(si, check.scope):
        for vm, props in _collect(si, dc, vim.VirtualMachine, ["name", "snapshot"]):
            name = str(props.get("name", ""))
            info = props.get("snapshot")
            if info is None or not in_scope(check.scope, name):
                continue
            for tree, path in _snapshots(info.rootSnapshotList or [], ""):
                created: dt.datetime = tree.createTime
                age = (now - created).total_seconds()
                if age <= check.threshold:
                    continue
                snap = _ref(tree.snapshot)
                found.append(
                    Finding(
                        key=f"{vm._moId}/{snap.Value}",
                        object=_ref(vm),
                        name=name,
                        value=round(age, 3),
                        since=rfc3339(created + dt.timedelta(seconds=check.threshold)),
                        data={
                            "Vm": _entity("Vm", name, vm),
                            "Datacenter": _entity("Datacenter", dc_name, dc),
                            "Snapshot": {
                                "Name": str(tree.name),
                                "Path": path + str(tree.name),
                                "Description": str(tree.description or ""),
                                "CreateTime": rfc3339(created),
                                "Snapshot": msgspec.to_builtins(snap),
                            },
                        },
                    )
                )
    return found


def _snapshots(trees: list[Any], prefix: str) -> Iterator[tuple[Any, str]]:
    """Every snapshot of a VM's tree, with the path of its parents (`base/before-upgrade/`)."""
    for tree in trees:
        yield tree, prefix
        yield from _snapshots(tree.childSnapshotList or [], f"{prefix}{tree.name}/")


def _datastore_usage(si: Any, check: DatastoreUsageCheck) -> list[Finding]:
    found: list[Finding] = []
    clear_below = check.threshold if check.clear_below is None else check.clear_below
    paths = ["name", "summary.capacity", "summary.freeSpace", "summary.accessible"]
    for dc, dc_name in _datacenters(si, check.scope):
        for ds, props in _collect(si, dc, vim.Datastore, paths):
            name = str(props.get("name", ""))
            capacity = int(props.get("summary.capacity") or 0)
            free = int(props.get("summary.freeSpace") or 0)
            if capacity <= 0 or not props.get("summary.accessible", True):
                continue  # an inaccessible datastore reports no usable numbers
            if not in_scope(check.scope, name):
                continue
            used = (capacity - free) * 100.0 / capacity
            if used < clear_below:
                continue
            found.append(
                Finding(
                    key=str(ds._moId),
                    object=_ref(ds),
                    name=name,
                    value=round(used, 2),
                    over=used >= check.threshold,
                    data={
                        "Ds": _entity("Datastore", name, ds),
                        "Datacenter": _entity("Datacenter", dc_name, dc),
                        "CapacityBytes": capacity,
                        "FreeSpaceBytes": free,
                    },
                )
            )
    return found


def _vm_powered_off(si: Any, check: VmPoweredOffCheck, now: dt.datetime) -> list[Finding]:
    off: list[tuple[Any, str, Any, str]] = []
    for dc, dc_name in _datacenters(si, check.scope):
        for vm, props in _collect(si, dc, vim.VirtualMachine, ["name", "runtime.powerState"]):
            name = str(props.get("name", ""))
            if props.get("runtime.powerState") == "poweredOff" and in_scope(check.scope, name):
                off.append((vm, name, dc, dc_name))
    if not off:
        return []
    last_off, oldest = _power_off_times(si)
    found: list[Finding] = []
    for vm, name, dc, dc_name in off:
        when = last_off.get(str(vm._moId))
        known = when is not None
        since_off = when if when is not None else (oldest or now)
        age = (now - since_off).total_seconds()
        if age <= check.threshold:
            continue
        found.append(
            Finding(
                key=str(vm._moId),
                object=_ref(vm),
                name=name,
                value=round(age, 3),
                since=rfc3339(since_off + dt.timedelta(seconds=check.threshold)),
                data={
                    "Vm": _entity("Vm", name, vm),
                    "Datacenter": _entity("Datacenter", dc_name, dc),
                    "PoweredOffSince": rfc3339(since_off),
                    "PoweredOffSinceKnown": known,
                },
            )
        )
    return found


def _power_off_times(si: Any) -> tuple[dict[str, dt.datetime], dt.datetime | None]:
    """The latest power-off time per VM moref in vCenter's history, and its oldest event."""
    em = si.content.eventManager
    spec: Any = vim.event.EventFilterSpec
    latest: dict[str, dt.datetime] = {}
    col = em.CreateCollectorForEvents(spec(eventTypeId=list(POWER_OFF_EVENTS)))
    try:
        col.RewindCollector()
        while page := col.ReadNextEvents(_EVENT_PAGE):
            for event in page:
                vm = getattr(event.vm, "vm", None) if event.vm is not None else None
                if vm is None:
                    continue
                moref = str(vm._moId)
                if moref not in latest or event.createdTime > latest[moref]:
                    latest[moref] = event.createdTime
    finally:
        col.DestroyCollector()
    oldest: dt.datetime | None = None
    col = em.CreateCollectorForEvents(spec())
    try:
        col.RewindCollector()
        first = col.ReadNextEvents(1)
        if first:
            oldest = first[0].createdTime
    finally:
        col.DestroyCollector()
    return latest, oldest
