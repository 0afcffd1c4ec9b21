"""Blocking pyvmomi access to one vCenter: log in, read history, follow the latest page.

Every method blocks; the follower calls them in a worker thread.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vebus.config import VCenterConfig

__all__ = ["HISTORY_PAGE", "VCenterClient"]

log = logging.getLogger(__name__)

#: events per ReadNextEvents call while catching up (vSphere's maximum)
HISTORY_PAGE = 1000


class VCenterClient:
    """One logged-in session with a vCenter, and the tail collector on it."""

    def __init__(self, cfg: VCenterConfig) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self.host = parts.hostname or ""
        self.protocol = parts.scheme
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.si: Any = None
        self.api_version = ""
        self.full_name = ""
        self._tail: Any = None
        self._filter: Any = None
        self._version = ""

    def connect(self) -> None:
        """Log in (raises on failure: wrong credentials, refused connection, TLS)."""
        self.si = SmartConnect(
            host=self.host,
            port=self.port,
            user=self.cfg.username,
            pwd=self.cfg.password,
            protocol=self.protocol,
            disableSslCertValidation=self.cfg.insecure,
            connectionPoolTimeout=30,
        )
        about = self.si.content.about
        self.api_version = str(about.apiVersion)
        self.full_name = str(about.fullName)

    def close(self) -> None:
        """Log out, ignoring a connection that is already gone."""
        si, self.si, self._tail, self._filter = self.si, None, None, None
        if si is not None:
            try:
                Disconnect(si)
            except Exception as e:  # the session may be gone with the server
                log.debug("disconnect from %s failed: %r", self.cfg.name, e)

    def latest(self, count: int = 1) -> list[Any]:
        """The newest `count` events vCenter has."""
        col = self.si.content.eventManager.CreateCollectorForEvents(
            vim.event.EventFilterSpec(maxCount=count)
        )
        try:
            return list(col.latestPage or [])
        finally:
            col.DestroyCollector()

    def history(self, since: dt.datetime | None) -> list[Any]:
        """Every event vCenter still has from `since` on (all it has when None), by key."""
        spec = vim.event.EventFilterSpec(maxCount=HISTORY_PAGE)
        if since is not None:
            spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since)
        col = self.si.content.eventManager.CreateCollectorForEvents(spec)
        events: list[Any] = []
        try:
            col.RewindCollector()
            while True:
                page = col.ReadNextEvents(HISTORY_PAGE)
                if not page:
                    break
                events.extend(page)
        finally:
            col.DestroyCollector()
        return events

    def open_tail(self, page_size: int) -> None:
        """Create the collector whose `latestPage` the follower waits on."""
        em = self.si.content.eventManager
        self._tail = em.CreateCollectorForEvents(vim.event.EventFilterSpec(maxCount=page_size))
        pc = self.si.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=self._tail)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.event.EventHistoryCollector, pathSet=["latestPage"]
                )
            ],
        )
        self._filter = pc.CreateFilter(spec, partialUpdates=True)
        self._version = ""

    def wait_page(self, max_wait: int) -> list[Any] | None:
        """The latest page when it changed within `max_wait` seconds, else None."""
        pc = self.si.content.propertyCollector
        update = pc.WaitForUpdatesEx(
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
