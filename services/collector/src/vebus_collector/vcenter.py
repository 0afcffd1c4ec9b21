"""Blocking pyvmomi access to one vCenter: read history, follow the latest page.

Every method blocks; the follower calls them in its own worker threads (pyvmomi's stub
keeps a pool of connections and may be used from several threads at once). Logging in,
TLS and the password are vebus.vsphere's Session.

The tail waits on a PropertyCollector of its own (`CreatePropertyCollector()`), not on the
session's default one, as VMware's SDK guide advises for every wait loop: a wait on the
default collector shares it with anything else waiting in the session, and vcsim 0.24
sends the updates of the default collector to whichever session last started waiting on
it. Measured (`uv run python -m loadtest.waitfortask`): while another client power-cycled
VMs with pyvmomi's WaitForTask, a loop waiting on the default collector saw 1 of 8 events
within 15 s, and the collector published them only after its watchdog re-read history
(1 to 7 s late); on a collector of its own every event was seen about 0.24 s after its
task ended. The private collector is destroyed with the tail.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from pyVmomi import vim, vmodl

from vebus.config import VCenterConfig
from vebus.vsphere import Session, VCenterConnectionError

__all__ = ["HISTORY_PAGE", "VCenterClient"]

log = logging.getLogger(__name__)

#: events per ReadNextEvents call while catching up (vSphere's maximum)
HISTORY_PAGE = 1000


class VCenterClient:
    """One logged-in session with a vCenter, and the tail collector on it."""

    def __init__(self, cfg: VCenterConfig) -> None:
        self.cfg = cfg
        self.session = Session(cfg, where=f"vcenters[{cfg.name}]")
        self._tail: Any = None
        self._pc: Any = None
        self._version = ""

    @property
    def si(self) -> Any:
        """The ServiceInstance of the last `connect()` (no login here: the watchdog and the
        enricher must not log in behind the follower's back)."""
        si = self.session.current
        if si is None:
            raise VCenterConnectionError(f"vcenters[{self.cfg.name}]: not logged in")
        return si

    @property
    def api_version(self) -> str:
        return self.session.api_version

    @property
    def full_name(self) -> str:
        return self.session.full_name

    def connect(self) -> None:
        """Log in anew (raises vebus.vsphere errors: refused login, unreachable, TLS)."""
        self._tail = self._pc = None  # they belonged to the session that ends now
        self.session.login()

    def close(self) -> None:
        """Drop the tail's property collector and log out, ignoring a vCenter that is gone."""
        self.close_tail(collector=False)  # the event collector goes with the session
        self.session.logout()

    def latest(self, count: int = 1) -> list[Any]:
        """The newest `count` events vCenter has."""
        col = self.si.content.eventManager.CreateCollectorForEvents(
            vim.event.EventFilterSpec(maxCount=count)
        )
        try:
            return list(col.latestPage or [])
        finally:
            col.DestroyCollector()

    def latest_key(self) -> int | None:
        """The newest event key vCenter has (None: no event)."""
        newest = self.latest(1)
        return int(newest[0].key) if newest else None

    def history_pages(self, since: dt.datetime | None) -> Iterator[list[Any]]:
        """Pages of the events vCenter still has from `since` on (all it has when None).

        A generator: each `next()` is one ReadNextEvents call (run it in a thread); the
        history collector is destroyed when it ends or is closed."""
        spec = vim.event.EventFilterSpec(maxCount=HISTORY_PAGE)
        if since is not None:
            spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since)
        col = self.si.content.eventManager.CreateCollectorForEvents(spec)
        try:
            col.RewindCollector()
            while True:
                page = col.ReadNextEvents(HISTORY_PAGE)
                if not page:
                    return
                yield list(page)
        finally:
            try:
                col.DestroyCollector()
            except Exception as e:  # the session may be gone
                log.debug("destroying a history collector failed: %r", e)

    def open_tail(self, page_size: int) -> None:
        """Create the collector whose `latestPage` the follower waits on, and the private
        property collector it waits with (replacing those opened before in this session)."""
        self.close_tail()
        content = self.si.content
        self._tail = content.eventManager.CreateCollectorForEvents(
            vim.event.EventFilterSpec(maxCount=page_size)
        )
        self._pc = content.propertyCollector.CreatePropertyCollector()
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=self._tail)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.event.EventHistoryCollector, pathSet=["latestPage"]
                )
            ],
        )
        self._pc.CreateFilter(spec, partialUpdates=True)
        self._version = ""

    def close_tail(self, *, collector: bool = True) -> None:
        """Destroy the tail's property collector (with its filter) and, with `collector`,
        its event collector, if any."""
        pc, tail, self._pc, self._tail = self._pc, self._tail, None, None
        for obj, method in ((pc, "DestroyPropertyCollector"), (tail, "DestroyCollector")):
            if obj is None or (method == "DestroyCollector" and not collector):
                continue
            try:
                getattr(obj, method)()
            except Exception as e:  # the session may be gone
                log.debug("%s: %s of the tail failed: %r", self.cfg.name, method, e)

    def wait_page(self, max_wait: int) -> list[Any] | None:
        """The latest page when it changed within `max_wait` seconds, else None."""
        update = self._pc.WaitForUpdatesEx(
            self._version, vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait)
        )
        if update is None:
            return None
        self._version = update.version
        events: list[Any] = []
        for fs in update.filterSet or []:
            for obj in fs.objectSet or []:
                for change in obj.changeSet or []:
                    if change.name == "latestPage" and change.val is not None:
                        val = change.val
                        events.extend(val if isinstance(val, list | tuple) else [val])
        return events

    def vm_uuids(self, moref: str) -> tuple[str | None, str | None]:
        """A VM's (instance UUID, BIOS UUID); (None, None) when it is gone."""
        vm = vim.VirtualMachine(moref, self.si._stub)
        pc = self.si.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=["config.instanceUuid", "config.uuid"]
                )
            ],
        )
        try:
            result = pc.RetrieveContents([spec])
        except vmodl.fault.ManagedObjectNotFound:
            return None, None
        props = {p.name: p.val for obj in result or [] for p in obj.propSet or []}
        instance, bios = props.get("config.instanceUuid"), props.get("config.uuid")
        return (str(instance) if instance else None, str(bios) if bios else None)
