"""The vsphere sink: act on the VM an event names, through pyvmomi (the `vsphere` extra).

For each event it sets, on the VM in the event's `data.Vm.Vm` reference (VEBA's field
names), either a custom attribute (`action: attribute`; the attribute is created for
VirtualMachine objects on first use) or the annotation (`action: annotation`, replaced,
or with `append` added as a new last line). The value is the route's template. pyvmomi
blocks: calls run on the sink's own threads over one vebus.vsphere Session (the TLS policy
with `ca_file`, `insecure` with its warning, `password_file`, a new login when vCenter
says the session expired), logged in on first use.

At-least-once: success is vCenter's answer to SetField, or the reconfigure task ending in
`success`. Setting an attribute or replacing the annotation is idempotent; appending is
not (a redelivered event appends its line again), and two replicas appending to the same
VM at once can lose one line. An event that names no VM, or a VM that no longer exists,
is permanent, and so are a login vCenter refuses and a TLS certificate that does not
verify (set `ca_file`, then replay the dead letters); a fault vCenter may recover from (a
task in progress, a lost connection, an expired session) is retried. Reconfiguring a VM
makes a VmReconfiguredEvent: a route that annotates must not match those, or it feeds
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import (
    ConfigError,
    DeliveryError,
    ErrorCode,
    InvalidEventError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.templating import compile_field, render
from vebus_dispatcher.sinks.threads import SinkThreads

__all__ = ["VsphereSink", "vm_reference"]

#: concurrent calls into vCenter per sink, however large max_in_flight is
MAX_THREADS = 4
#: faults that are worth another attempt later
RETRYABLE_FAULTS = (
    "TaskInProgress",
    "InvalidState",
    "HostCommunication",
    "SystemError",
    "RequestCanceled",
    "NotAuthenticated",
    "ConcurrentAccess",
)


def vm_reference(event: CloudEvent) -> str:
    """The moref value (`vm-56`) of the VM the event names; InvalidEventError if none."""
    try:
        data = event.json_data()
    except InvalidEventError as e:
        raise InvalidEventError(f"event {event.id}: {e}") from None
    vm = data.get("Vm") if isinstance(data, dict) else None
    ref = vm.get("Vm") if isinstance(vm, dict) else None
    if not isinstance(ref, dict) or ref.get("Type") != "VirtualMachine" or not ref.get("Value"):
        raise InvalidEventError(
            f"event {event.id} ({event.type}) names no VM (no data.Vm.Vm of Type "
            "VirtualMachine): the vsphere sink has nothing to act on"
        )
    return str(ref["Value"])


class VsphereSink:
    """Sets the attribute or annotation on the event's VM."""

    kind = "vsphere"

    def __init__(self, sink: config.VsphereSink, ctx: SinkContext) -> None:
        try:
            vsphere = importlib.import_module("vebus.vsphere")
            pyvmomi = importlib.import_module("pyVmomi")
        except ImportError:
            raise ConfigError(
                [
                    f"route {ctx.route.name}: sink kind vsphere needs pyvmomi: install the "
                    "dispatcher with its vsphere extra (vebus-dispatcher[vsphere])"
                ]
            ) from None
        self._vim: Any = pyvmomi.vim
        self._vmodl: Any = pyvmomi.vmodl
        self._errors: Any = vsphere
        self._sink = sink
        self._timeout = float(ctx.route.delivery.timeout)
        self._value = compile_field(ctx.route.name, "value", sink.value)
        self._session: Any = vsphere.Session(
            sink, where=f"routes[{ctx.route.name}].sink", timeout=self._timeout
        )
        #: the custom attribute's key, and the login it was read in
        self._field: tuple[int, int] | None = None
        self._vm_locks: dict[str, threading.Lock] = {}
        size = min(MAX_THREADS, ctx.route.delivery.max_in_flight)
        self._threads = SinkThreads(f"vsphere-{ctx.route.name}", size)

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        try:
            moref = vm_reference(event)
        except InvalidEventError as e:
            raise PermanentDeliveryError(str(e), code=ErrorCode.INVALID_EVENT) from None
        text = render(self._value, event)
        await self._threads.run(self._apply, moref, text)

    # -------------------------------------------------------------- on a pool thread

    def _apply(self, moref: str, text: str) -> None:
        where = f"{self._sink.url} {moref}"
        errors = self._errors
        try:
            self._session.run(lambda si: self._act(si, moref, text, where))
        except DeliveryError:
            raise
        except errors.VCenterConnectionError as e:  # unreachable, timed out, not answering
            raise RetryableDeliveryError(str(e), code=ErrorCode.CONNECTION_FAILURE) from None
        except (errors.VCenterCertificateError, errors.VCenterLoginError, ConfigError) as e:
            # a certificate that does not verify, refused credentials, an unreadable
            # password_file or ca_file: the same every time until the config changes
            raise PermanentDeliveryError(str(e), code=ErrorCode.SINK_ERROR) from None
        except self._vim.fault.NotAuthenticated:  # even right after a new login
            raise RetryableDeliveryError(
                f"{where}: vCenter keeps refusing the session", code=ErrorCode.CONNECTION_FAILURE
            ) from None
        except self._vmodl.fault.ManagedObjectNotFound:
            raise PermanentDeliveryError(
                f"{where}: the VM does not exist (any more)", code=ErrorCode.SINK_ERROR
            ) from None
        except self._vmodl.MethodFault as e:
            raise fault_error(where, e) from None
        except OSError as e:  # refused, reset, timed out: pyvmomi reconnects next time
            raise RetryableDeliveryError(
                f"{where}: connection failed: {e!r}", code=ErrorCode.CONNECTION_FAILURE
            ) from e

    def _act(self, si: Any, moref: str, text: str, where: str) -> None:
        vm = self._vim.VirtualMachine(moref, si._stub)
        if self._sink.action == "attribute":
            key = self._attribute_key(si)
            si.content.customFieldsManager.SetField(entity=vm, key=key, value=text)
        else:
            with self._vm_locks.setdefault(moref, threading.Lock()):
                self._annotate(vm, text, where)

    def _attribute_key(self, si: Any) -> int:
        login = self._session.logins
        if self._field is not None and self._field[1] == login:
            return self._field[0]
        name = self._sink.attribute
        cfm = si.content.customFieldsManager
        for _ in range(2):
            for f in cfm.field or []:
                if f.name == name and f.managedObjectType in (None, self._vim.VirtualMachine):
                    self._field = (int(f.key), login)
                    return int(f.key)
            try:
                created = cfm.AddCustomFieldDef(name=name, moType=self._vim.VirtualMachine)
            except self._vim.fault.DuplicateName:
                continue  # another replica made it just now: read it again
            self._field = (int(created.key), login)
            return int(created.key)
        raise PermanentDeliveryError(
            f"{self._sink.url}: custom attribute {name!r} exists for another object type",
            code=ErrorCode.SINK_ERROR,
        )

    def _annotate(self, vm: Any, text: str, where: str) -> None:
        annotation = text
        if self._sink.append:
            current = vm.config.annotation or ""
            annotation = f"{current}\n{text}" if current else text
        task = vm.ReconfigVM_Task(spec=self._vim.vm.ConfigSpec(annotation=annotation))
        deadline = time.monotonic() + self._timeout
        while True:
            info = task.info
            if info.state == "success":
                return
            if info.state == "error":
                raise fault_error(where, info.error)
            if time.monotonic() > deadline:
                raise RetryableDeliveryError(
                    f"{where}: reconfigure task {task._moId} still {info.state} after "
                    f"{self._timeout:g}s",
                    code=ErrorCode.TIMEOUT,
                )
            time.sleep(0.1)

    async def close(self) -> None:
        await self._threads.close()
        with contextlib.suppress(Exception):  # the session may be gone with the server
            await asyncio.to_thread(self._session.logout)


def fault_error(where: str, fault: Any) -> DeliveryError:
    """A DeliveryError for a vSphere fault: known transient faults are retryable."""
    name = type(fault).__name__
    message = f"{where}: {name}: {getattr(fault, 'msg', None) or fault}"
    if name in RETRYABLE_FAULTS:
        return RetryableDeliveryError(message, code=ErrorCode.SINK_ERROR)
    return PermanentDeliveryError(message, code=ErrorCode.SINK_ERROR)
