"""The vsphere sink against the vCenter simulator: the attribute or annotation is set on
the VM the event names, read back with pyvmomi."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client

from tests.conftest import Vcsim
from tests.support.dispatcher import (
    event,
    eventually,
    inject,
    one_dead_letter,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.stack import Stack
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.integration


def vm_event(n: str, moref: str, name: str) -> Any:
    data = {
        "Key": n,
        "UserName": "VSPHERE.LOCAL\\alice",
        "Vm": {"Name": name, "Vm": {"Type": "VirtualMachine", "Value": moref}},
        "FullFormattedMessage": f"{name} is powered off",
    }
    return event(n, data=json.dumps(data).encode())


def attributes(vs: VSphere, vm: Any) -> dict[str, str]:
    names = {f.key: f.name for f in vs.content.customFieldsManager.field}
    return {names[v.key]: v.value for v in vm.customValue}


async def test_an_attribute_and_the_annotation_are_set_on_the_events_vm(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        first, second = (await asyncio.to_thread(vs.vms))[:2]
        common = {"kind": "vsphere", "url": vcsim.url, "username": "user", "password": "pass"}
        js = await start_dispatcher(
            stack,
            nc,
            [
                route("tag", sink={**common, "attribute": "vebus-last-event",
                                   "value": "{{ subject }} by {{ data.UserName }}"}),
                route("note", sink={**common, "action": "annotation", "append": True,
                                    "value": "{{ data.FullFormattedMessage }}"}),
            ],
        )  # fmt: skip
        await inject(js, "tag", vm_event("1", first._moId, first.name))
        await inject(js, "note", vm_event("2", second._moId, second.name))
        await eventually(route_settled(js, "note"), "the annotation", stack)
        await inject(js, "note", vm_event("3", second._moId, second.name))
        await inject(js, "note", vm_event("4", "vm-does-not-exist", "ghost"))
        await inject(js, "tag", event("5", data=b'{"Host": {"Name": "esx-1"}}'))
        for name in ("tag", "note"):
            await eventually(route_settled(js, name), f"route {name} emptied", stack)

        got = await asyncio.to_thread(attributes, vs, first)
        assert got == {"vebus-last-event": "VmPoweredOffEvent by VSPHERE.LOCAL\\alice"}
        annotation = await asyncio.to_thread(lambda: second.config.annotation)
        assert annotation == f"{second.name} is powered off\n{second.name} is powered off"

        ghost = await eventually(one_dead_letter(js, "note"), "a dead letter", stack)
        assert (ghost.code, ghost.exhausted, ghost.attempts) == ("SINK_ERROR", "not_retryable", 1)
        assert "does not exist" in ghost.error
        novm = await eventually(one_dead_letter(js, "tag"), "a dead letter", stack)
        assert (novm.code, novm.exhausted) == ("INVALID_EVENT", "not_retryable")
        assert "names no VM" in novm.error
    finally:
        await asyncio.to_thread(vs.close)
