"""`vebus demo`: make the simulator's VMs do things so events flow."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import click

from vebus.cli._common import fail
from vebus.config import VCenterEndpoint
from vebus.errors import VebusError

__all__ = ["demo"]


def _wait(task: Any) -> None:
    from pyVim.task import WaitForTask

    WaitForTask(task)


@click.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8989/sdk",
    show_default=True,
    help="The vCenter (simulator) SDK URL.",
)
@click.option("--user", default="user", show_default=True)
@click.option("--password", default="pass", show_default=True)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False),
    help="PEM of the CA that signed an https vCenter's certificate (default: system CAs).",
)
@click.option("--insecure", is_flag=True, help="Do not verify an https vCenter's certificate.")
@click.option(
    "--cycles",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Rounds over all VMs.",
)
@click.option(
    "--vms", type=click.IntRange(min=0), default=0, help="Use at most this many VMs (0: all)."
)
def demo(
    url: str,
    user: str,
    password: str,
    ca_file: str | None,
    insecure: bool,
    cycles: int,
    vms: int,
) -> None:
    """Power-cycle and reconfigure the simulator's VMs so that vSphere events flow
    (VmPoweredOffEvent, VmPoweredOnEvent, VmReconfiguredEvent, ...).

    Meant for the simulator that `vebus up` starts; do not point it at a real vCenter.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number, or out of range
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        fail(f"--url {url!r}: expected an http(s) URL such as http://127.0.0.1:8989/sdk", 2)
    try:
        from pyVmomi import vim

        from vebus.vsphere import Session, VCenterCertificateError, VCenterConnectionError
    except ImportError:
        fail("vebus demo needs pyvmomi: install vebus with its 'vsphere' extra")
    if ca_file and insecure:
        fail("--ca-file and --insecure: give one of them (--insecure checks no certificate)", 2)
    if not password:
        fail("--password: required", 2)
    endpoint = VCenterEndpoint(
        url=url, username=user, password=password, ca_file=ca_file, insecure=insecure
    )
    session = Session(endpoint, where="demo", timeout=30, notice=False)
    try:
        si = session.si
    except VCenterConnectionError as e:
        fail(f"{e} (is `vebus up` running?)")
    except VCenterCertificateError as e:
        fail(f"{e}; here: --ca-file PATH or --insecure")
    except VebusError as e:
        fail(str(e))
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        machines = sorted(view.view, key=lambda v: v.name)
        if vms:
            machines = machines[:vms]
        for _ in range(cycles):
            for vm in machines:
                if vm.runtime.powerState == "poweredOn":
                    _wait(vm.PowerOffVM_Task())
                    click.echo(f"powered off {vm.name}")
                _wait(vm.PowerOnVM_Task())
                click.echo(f"powered on  {vm.name}")
                spec = vim.vm.ConfigSpec(annotation=f"vebus demo {time.strftime('%H:%M:%S')}")
                _wait(vm.ReconfigVM_Task(spec))
                click.echo(f"reconfigured {vm.name}")
    finally:
        session.logout()
