"""The vsphere sink against the vCenter simulator: the attribute or annotation is set on
the VM the event names, read back with pyvmomi; over HTTPS its certificate is verified."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.conftest import Vcsim
from tests.support.dispatcher import (
    dead_letters,
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


async def test_a_vcenter_whose_certificate_does_not_verify_is_refused_unless_trusted(
    stack: Stack, nc: Client, tls_vcsim: Callable[[], tuple[str, Path]]
) -> None:
    """Over HTTPS to 127.0.0.1 (where pyvmomi, given no SSL context, verifies nothing): the
    simulator's self-signed certificate is a dead letter saying what to set, at once; with
    `ca_file` the attribute is set."""
    url, cert = tls_vcsim()
    common = {"kind": "vsphere", "url": url, "username": "user", "password": "pass",
              "attribute": "vebus-tls", "value": "{{ id }}"}  # fmt: skip
    js = await start_dispatcher(
        stack,
        nc,
        [route("unverified", sink=common), route("trusted", sink={**common, "ca_file": str(cert)})],
    )
    vs = await asyncio.to_thread(VSphere, url, str(cert))
    try:
        vm = (await asyncio.to_thread(vs.vms))[0]
        await inject(js, "unverified", vm_event("1", vm._moId, vm.name))
        await inject(js, "trusted", vm_event("2", vm._moId, vm.name))
        refused = await eventually(one_dead_letter(js, "unverified"), "a dead letter", stack)
        assert (refused.code, refused.exhausted, refused.attempts) == (
            "SINK_ERROR",
            "not_retryable",
            1,
        )
        assert "CERTIFICATE_VERIFY_FAILED" in refused.error
        assert "set ca_file to the CA that signed it" in refused.error
        await eventually(route_settled(js, "trusted"), "route trusted emptied", stack)
        assert not await dead_letters(js, "trusted")
        got = await asyncio.to_thread(attributes, vs, vm)
        assert got == {"vebus-tls": "2"}
    finally:
        await asyncio.to_thread(vs.close)
