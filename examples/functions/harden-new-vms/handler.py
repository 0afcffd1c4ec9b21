"""Apply a hardening profile (extraConfig settings) to each new VM."""

import json
import os
from pathlib import Path

from pyVim.task import WaitForTask
from pyVmomi import vim

from vebus_functions import Reject

PROFILES = json.loads((Path(__file__).parent / "profiles.json").read_text())


def handle(event, ctx):
    profile = PROFILES.get(os.environ.get("PROFILE", "baseline"))
    if profile is None:
        raise Reject(f"no profile {os.environ.get('PROFILE')!r} in profiles.json")
    vm = ctx.object(event.data["Vm"]["Vm"])
    have = {o.key: str(o.value) for o in vm.config.extraConfig or []}
    missing = {k: v for k, v in profile.items() if have.get(k) != v}
    if missing:
        spec = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in missing.items()]
        )
        WaitForTask(vm.ReconfigVM_Task(spec=spec))
    ctx.log.info(
        "%s: %d setting(s) applied, %d already set",
        vm.name,
        len(missing),
        len(profile) - len(missing),
    )
    return {"vm": vm.name, "applied": sorted(missing)}
