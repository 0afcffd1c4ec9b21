"""Remove a snapshot the snapshot-age check reports (DRY_RUN=true: only say so)."""

import os
import time

from pyVmomi import vim, vmodl

GONE = (vim.fault.NotFound, vmodl.fault.ManagedObjectNotFound)
PC = vmodl.query.PropertyCollector


def wait(ctx, task, timeout=600.0):
    """Wait for `task`, reading only its state and error (not the whole TaskInfo, whose
    `entity` some vCenter versions and the simulator set to the snapshot itself)."""
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=task)],
        propSet=[PC.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error"])],
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ctx.content.propertyCollector.RetrieveContents([spec])
        props = {p.name: p.val for o in found for p in o.propSet}
        if props.get("info.state") == "success":
            return
        if props.get("info.state") == "error":
            raise props["info.error"]
        time.sleep(0.5)
    raise TimeoutError(f"task {task._moId} still running after {timeout:g}s")


def handle(event, ctx):
    data = event.data
    vm, snap = data["Vm"]["Name"], data["Snapshot"]
    what = f"snapshot {snap['Name']!r} of {vm} ({data['Value'] / 86400:.1f} days old)"
    if os.environ.get("DRY_RUN", "false").lower() in ("1", "true", "yes"):
        ctx.log.info("dry run: would remove %s", what)
        return {"vm": vm, "snapshot": snap["Name"], "removed": False, "dry_run": True}
    try:
        wait(ctx, ctx.object(snap["Snapshot"]).RemoveSnapshot_Task(removeChildren=False))
        ctx.log.info("removed %s", what)
    except GONE:
        ctx.log.info("%s: already gone", what)  # removed by hand, or by an earlier try
    return {"vm": vm, "snapshot": snap["Name"], "removed": True, "dry_run": False}
