"""Map pyvmomi vSphere events to VEBA-compatible CloudEvent `data` (pure, no I/O)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol, cast

import msgspec
from pyVmomi import VmomiSupport, vim
from pyVmomi.Version import IsChildVersion

__all__ = ["event_class", "event_kind", "rfc3339", "to_data", "to_json"]

# Every vmodl.DynamicData has these two; VEBA's payloads (govmomi) do not carry them.
_SKIPPED: Final = frozenset({"dynamicType", "dynamicProperty"})

# pyVmomi's own functions are untyped: give them their types once, here.
_wsdl_name: Final[Callable[[type], str]] = VmomiSupport.GetWsdlName
_is_child_version: Final[Callable[[str, str], bool]] = IsChildVersion
_F_OPTIONAL: Final[int] = VmomiSupport.F_OPTIONAL


class _PropertyInfo(Protocol):
    name: str
    version: str
    flags: int


_Properties = tuple[tuple[str, str, bool], ...]
# Memo of pyVmomi's static type information: (class, version) -> its properties.
_PROPERTIES: Final[dict[tuple[type, str | None], _Properties]] = {}


def event_class(event: vim.event.Event) -> str:
    """Return the event's class (`VmPoweredOffEvent`); the `eventTypeId` for EventEx and
    ExtendedEvent (`esx.problem.test`), or their class name when it is empty."""
    _check_event(event)
    if isinstance(event, vim.event.EventEx | vim.event.ExtendedEvent) and event.eventTypeId:
        return str(event.eventTypeId)
    return _wsdl_name(type(event))


def event_kind(event: vim.event.Event) -> str:
    """Return the CloudEvent `eventclass` extension: `event`, `eventex` or `extendedevent`."""
    _check_event(event)
    if isinstance(event, vim.event.EventEx):
        return "eventex"
    if isinstance(event, vim.event.ExtendedEvent):
        return "extendedevent"
    return "event"


def to_data(event: vim.event.Event, *, version: str | None = None) -> dict[str, Any]:
    """Return the event as VEBA's JSON `data`: vSphere property names with the first letter
    upper-cased, nested data objects alike, managed object references as
    `{"Type": ..., "Value": ...}`, datetimes as UTC `...Z` strings, unset properties as None.

    `version` limits the properties to those of one vSphere API version, which is what a
    vCenter speaking that version can send: a pyvmomi version name (`si._stub.version`,
    e.g. `vim.version.version11`), a namespace URI (`urn:vim25/6.5`) or an API version
    (`about.apiVersion`, e.g. `8.0.3.0`). Without it, every property the installed
    pyvmomi defines is included (pyvmomi 9.1 adds `Tgw` and `AuditId` to every event).
    """
    _check_event(event)
    return _data_object(event, _version_name(version))


def to_json(event: vim.event.Event, *, version: str | None = None) -> bytes:
    """Return `to_data(event, version=version)` as compact JSON."""
    return msgspec.json.encode(to_data(event, version=version))


def _check_event(event: object) -> None:
    if not isinstance(event, vim.event.Event):
        raise TypeError(f"expected a pyvmomi vim.event.Event, got {type(event).__name__}")


@functools.cache
def _version_name(version: str | None) -> str | None:
    if version is None:
        return None
    if version in VmomiSupport.versionIdMap:
        return version
    uri = version.rsplit(":", 1)[-1]
    for candidate in (uri, f"vim25/{uri}"):
        if candidate in VmomiSupport.versionMap:
            return str(VmomiSupport.versionMap[candidate])
    raise ValueError(
        f"unknown vSphere API version {version!r}: expected a pyvmomi version name"
        " (si._stub.version, e.g. 'vim.version.version11'), 'urn:vim25/6.5' or '8.0.3.0'"
    )


def _properties(cls: type, version: str | None) -> _Properties:
    """(vSphere name, VEBA name, optional) of each property of `cls` in `version`."""
    found = _PROPERTIES.get((cls, version))
    if found is None:
        props: list[_PropertyInfo] = cast(Any, cls)._GetPropertyList()
        found = _PROPERTIES[cls, version] = tuple(
            (prop.name, prop.name[:1].upper() + prop.name[1:], bool(prop.flags & _F_OPTIONAL))
            for prop in props
            if prop.name not in _SKIPPED
            and (version is None or _is_child_version(version, prop.version))
        )
    return found


def _data_object(obj: object, version: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key, optional in _properties(type(obj), version):
        value = getattr(obj, name, None)
        if optional and isinstance(value, list) and not value:
            # SOAP cannot tell an empty array from an absent one: both are unset.
            out[key] = None
        else:
            out[key] = _value(value, version)
    return out


def _value(value: Any, version: str | None) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, VmomiSupport.ManagedObject):
        return {"Type": _wsdl_name(type(value)), "Value": str(value._moId)}
    if isinstance(value, VmomiSupport.DataObject):
        return _data_object(value, version)
    if isinstance(value, str):  # also enums, URI, PropertyPath, MethodName
        return str(value)
    if isinstance(value, int):  # also long, short, byte
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, bytes):  # xsd:base64Binary, encoded as Go's encoding/json does
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, type):  # vmodl.TypeName, e.g. EventEx.objectType
        return _wsdl_name(value)
    if isinstance(value, list):
        return [_value(item, version) for item in value]
    raise TypeError(f"cannot map a {type(value).__name__} value to JSON")


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:  # pyvmomi gives aware datetimes; treat a naive one as UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(value: datetime) -> str:
    """Return `value` as the UTC `...Z` string used for `CreatedTime` in the data."""
    return _rfc3339(value)
