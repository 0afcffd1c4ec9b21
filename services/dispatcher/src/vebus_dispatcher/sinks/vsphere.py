"""The vsphere sink: act on the VM an event names, through pyvmomi (the `vsphere` extra).

For each event it sets, on the VM in the event's `data.Vm.Vm` reference (VEBA's field
names), either a custom attribute (`action: attribute`; the attribute is created for
VirtualMachine objects on first use) or the annotation (`action: annotation`, replaced,
or with `append` added as a new last line). The value is the route's template. pyvmomi
blocks: calls run on the sink's own threads over one logged-in session, which is opened
on first use and again when vCenter says it expired.

At-least-once: success is vCenter's answer to SetField, or the reconfigure task ending in
`success`. Setting an attribute or replacing the annotation is idempotent; appending is
not (a redelivered event appends its line again), and two replicas appending to the same
VM at once can lose one line. An event that names no VM, or a VM that no longer exists,
is permanent; a fault vCenter may recover from (a task in progress, a lost connection,
an expired session) is retried. Reconfiguring a VM makes a VmReconfiguredEvent: a route
that annotates must not match those, or it feeds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

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
            self._connect = importlib.import_module("pyVim.connect")
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
        self._sink = sink
        self._timeout = float(ctx.route.delivery.timeout)
        self._value = compile_field(ctx.route.name, "value", sink.value)
        parts = urlsplit(sink.url)
        self._host = parts.hostname or ""
        self._protocol = parts.scheme
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path or "/sdk"
        self._si: Any = None
        self._field_key: int | None = None
        self._session_lock = threading.Lock()
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

    def _session(self) -> Any:
        with self._session_lock:
            if self._si is None:
                context = None
                if self._protocol == "https" and self._sink.insecure:
                    context = ssl._create_unverified_context()
                self._si = self._connect.SmartConnect(
                    host=self._host,
                    port=self._port,
                    user=self._sink.username,
                    pwd=self._sink.password,
                    protocol=self._protocol,
                    path=self._path,
                    sslContext=context,
                    httpConnectionTimeout=self._timeout,
                    connectionPoolTimeout=30,
                )
                self._field_key = None
            return self._si

    def _apply(self, moref: str, text: str) -> None:
        where = f"{self._sink.url} {moref}"
        for attempt in (1, 2):
            try:
                si = self._session()
                vm = self._vim.VirtualMachine(moref, si._stub)
                if self._sink.action == "attribute":
                    key = self._attribute_key(si)
                    si.content.customFieldsManager.SetField(entity=vm, key=key, value=text)
                else:
                    with self._vm_locks.setdefault(moref, threading.Lock()):
                        self._annotate(vm, text, where)
                return
            except DeliveryError:
                raise
            except self._vim.fault.NotAuthenticated:
                with self._session_lock:
                    self._si = None  # the session expired: log in again, once
                if attempt == 2:
                    raise RetryableDeliveryError(
                        f"{where}: vCenter keeps refusing the session",
                        code=ErrorCode.CONNECTION_FAILURE,
                    ) from None
            except self._vmodl.fault.ManagedObjectNotFound:
                raise PermanentDeliveryError(
                    f"{where}: the VM does not exist (any more)", code=ErrorCode.SINK_ERROR
                ) from None
            except self._vim.fault.InvalidLogin as e:
                raise PermanentDeliveryError(
                    f"{self._sink.url}: login refused: {e.msg}", code=ErrorCode.SINK_ERROR
                ) from None
            except self._vmodl.MethodFault as e:
                raise fault_error(where, e) from None
            except OSError as e:  # refused, reset, timed out, TLS
                with self._session_lock:
                    self._si = None
                raise RetryableDeliveryError(
                    f"{where}: connection failed: {e!r}", code=ErrorCode.CONNECTION_FAILURE
                ) from e
        raise AssertionError("unreachable")

    def _attribute_key(self, si: Any) -> int:
        if self._field_key is not None:
            return self._field_key
        name = self._sink.attribute
        cfm = si.content.customFieldsManager
        for _ in range(2):
            for f in cfm.field or []:
                if f.name == name and f.managedObjectType in (None, self._vim.VirtualMachine):
                    self._field_key = int(f.key)
                    return self._field_key
            try:
                created = cfm.AddCustomFieldDef(name=name, moType=self._vim.VirtualMachine)
            except self._vim.fault.DuplicateName:
                continue  # another replica made it just now: read it again
            self._field_key = int(created.key)
            return self._field_key
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
        si, self._si = self._si, None
        if si is not None:
            with contextlib.suppress(Exception):  # the session may be gone with the server
                await asyncio.to_thread(self._connect.Disconnect, si)


def fault_error(where: str, fault: Any) -> DeliveryError:
    """A DeliveryError for a vSphere fault: known transient faults are retryable."""
    name = type(fault).__name__
    message = f"{where}: {name}: {getattr(fault, 'msg', None) or fault}"
    if name in RETRYABLE_FAULTS:
        return RetryableDeliveryError(message, code=ErrorCode.SINK_ERROR)
    return PermanentDeliveryError(message, code=ErrorCode.SINK_ERROR)
