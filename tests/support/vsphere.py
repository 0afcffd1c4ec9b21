"""Driving the vCenter simulator from tests with pyvmomi (power, reconfigure, post events)."""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Any
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim


class VSphere:
    """A pyvmomi session with the simulator (blocking: call from a thread in async tests);
    over https it trusts `ca_file` (the simulator's own certificate)."""

    def __init__(self, url: str, ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        self.si = SmartConnect(
            host=parts.hostname,
            port=parts.port,
            user="user",
            pwd="pass",
            protocol=parts.scheme,
            sslContext=ssl.create_default_context(cafile=ca_file) if ca_file else None,
        )
        self.content = self.si.RetrieveContent()

    def close(self) -> None:
        Disconnect(self.si)

    def vms(self) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vim.VirtualMachine], True
        )
        return sorted(view.view, key=lambda v: v.name)

    def power_off(self, vm: Any) -> None:
        WaitForTask(vm.PowerOffVM_Task())

    def power_on(self, vm: Any) -> None:
        WaitForTask(vm.PowerOnVM_Task())

    def post_events(self, count: int, message: str = "vebus test") -> None:
        em = self.content.eventManager
        for i in range(count):
            em.PostEvent(
                vim.event.GeneralUserEvent(
                    message=f"{message} {i}",
                    createdTime=dt.datetime.now(dt.UTC),
                    key=0,
                    chainId=0,
                    userName="",
                )
            )

    def events(self) -> list[Any]:
        """Every event the simulator still has (its ring holds the latest 1000)."""
        col = self.content.eventManager.CreateCollectorForEvents(
            vim.event.EventFilterSpec(maxCount=1000)
        )
        try:
            return list(col.latestPage or [])
        finally:
            col.DestroyCollector()

    def newest_key(self) -> int:
        return max(int(e.key) for e in self.events())
