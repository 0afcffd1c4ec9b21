"""Optional enrichment: the affected object's managed object id and, for a VM, its instance
and BIOS UUID, as CloudEvent extensions (so a function need not call vCenter back).

Extensions: `vsphereobjecttype` (`VirtualMachine`), `vsphereobjectid` (`vm-56`), and for
VMs `vminstanceuuid` and `vmbiosuuid`. The UUIDs cost one property lookup per VM, cached
(LRU, `CACHE_TTL`); a VM that is gone gets the moref extensions only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pyVmomi import vim

__all__ = ["CACHE_SIZE", "CACHE_TTL", "Enricher", "affected_object"]

CACHE_SIZE = 10_000
#: seconds a VM's UUIDs are kept (they change only when a VM is re-registered or cloned)
CACHE_TTL = 3600.0

#: event argument attribute, the attribute of the argument holding the moref, by priority
_ARGUMENTS = (
    ("entity", "entity"),  # alarm events: the object the alarm is on
    ("vm", "vm"),
    ("host", "host"),
    ("ds", "datastore"),
    ("net", "network"),
    ("dvs", "dvs"),
    ("computeResource", "computeResource"),
    ("datacenter", "datacenter"),
)


def affected_object(event: Any) -> tuple[str, str] | None:
    """(type, moref id) of the object the event is about, or None."""
    if isinstance(event, vim.event.EventEx) and event.objectId and event.objectType:
        return _type_name(event.objectType), str(event.objectId)
    info = getattr(event, "info", None)  # task events
    entity = getattr(info, "entity", None) if info is not None else None
    if entity is not None:
        return _type_name(type(entity)), str(entity._moId)
    for arg_name, ref_name in _ARGUMENTS:
        arg = getattr(event, arg_name, None)
        ref = getattr(arg, ref_name, None) if arg is not None else None
        if ref is not None and getattr(ref, "_moId", None):
            return _type_name(type(ref)), str(ref._moId)
    return None


def _type_name(value: Any) -> str:
    name = getattr(value, "_wsdlName", None)
    if name:
        return str(name)
    return str(value).rsplit(".", 1)[-1]


class Enricher:
    """Extensions for events; `lookup(moref)` returns a VM's (instanceUuid, uuid), blocking."""

    def __init__(
        self,
        lookup: Callable[[str], tuple[str | None, str | None]],
        *,
        size: int = CACHE_SIZE,
        ttl: float = CACHE_TTL,
    ) -> None:
        self.lookup = lookup
        self.size = size
        self.ttl = ttl
        self._cache: OrderedDict[str, tuple[float, tuple[str | None, str | None]]] = OrderedDict()
        self.lookups = 0

    def extensions(self, event: Any) -> dict[str, str]:
        """The extensions for one event (blocking: may look a VM up)."""
        found = affected_object(event)
        if found is None:
            return {}
        kind, moref = found
        out = {"vsphereobjecttype": kind, "vsphereobjectid": moref}
        if kind == "VirtualMachine":
            instance, bios = self._uuids(moref)
            if instance:
                out["vminstanceuuid"] = instance
            if bios:
                out["vmbiosuuid"] = bios
        return out

    def _uuids(self, moref: str) -> tuple[str | None, str | None]:
        now = time.monotonic()
        hit = self._cache.get(moref)
        if hit is not None and now - hit[0] < self.ttl:
            self._cache.move_to_end(moref)
            return hit[1]
        self.lookups += 1
        value = self.lookup(moref)
        self._cache[moref] = (now, value)
        self._cache.move_to_end(moref)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return value
