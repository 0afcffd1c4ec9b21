"""Blocking pyvmomi access to one vCenter: log in, read history, follow the latest page.

Every method blocks; the follower calls them in its own worker threads (pyvmomi's stub
keeps a pool of connections and may be used from several threads at once).

TLS: the certificate is verified unless `insecure: true`, against the system's CAs or
`ca_file`. pyvmomi itself skips verification for localhost when given no SSL context, so
one is always given.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vebus.config import VCenterConfig

__all__ = ["HISTORY_PAGE", "VCenterClient", "ssl_context"]

log = logging.getLogger(__name__)

#: events per ReadNextEvents call while catching up (vSphere's maximum)
HISTORY_PAGE = 1000
#: seconds a connect or one read from vCenter may take: nothing hangs for ever
HTTP_TIMEOUT = 60


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
        context = ssl_context(self.cfg) if self.protocol == "https" else None
        self.si = SmartConnect(
            host=self.host,
            port=self.port,
            user=self.cfg.username,
            pwd=_password(self.cfg),
            protocol=self.protocol,
            sslContext=context,
            httpConnectionTimeout=HTTP_TIMEOUT,
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
        """Create the collector whose `latestPage` the follower waits on (replacing one
        opened before in this session)."""
        self.close_tail()
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

    def close_tail(self) -> None:
        """Destroy the tail's property filter and collector, if any."""
        tail, flt, self._tail, self._filter = self._tail, self._filter, None, None
        for obj, method in ((flt, "DestroyPropertyFilter"), (tail, "DestroyCollector")):
            if obj is not None:
                try:
                    getattr(obj, method)()
                except Exception as e:  # the session may be gone
                    log.debug("%s of the tail failed: %r", method, e)

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


def ssl_context(cfg: VCenterConfig) -> ssl.SSLContext:
    """The TLS context for `cfg`: verifying (system CAs, or `ca_file`) unless insecure."""
    if cfg.insecure:
        return ssl._create_unverified_context()
    if cfg.ca_file:
        try:
            return ssl.create_default_context(cafile=cfg.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"vcenters[{cfg.name}].ca_file {cfg.ca_file!r}: cannot load it as PEM "
                f"certificates ({e})"
            ) from None
    return ssl.create_default_context()


def _password(cfg: VCenterConfig) -> str:
    if not cfg.password_file:
        return cfg.password
    try:
        return Path(cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ValueError(
            f"vcenters[{cfg.name}].password_file {cfg.password_file!r}: cannot read it "
            f"({e.strerror})"
        ) from None
