"""The event a Python function is given: the CloudEvent, its `data` decoded.

Attributes are properties (`event.type`, `event.id`, `event.subject`, ...) and can also be
read by name as the CloudEvents SDK lets a VEBA function read them (`event["type"]`,
`event.get("eventclass")`); `event.data` is the decoded JSON (VEBA's `Vm`, `Host`,
`UserName`, ...), text for a `text/*` content type, bytes otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from vebus.bus.cloudevent import CloudEvent

__all__ = ["Event"]


class Event(Mapping[str, str]):
    """One CloudEvent, read-only. As a mapping: its attributes (extensions included)."""

    def __init__(self, ce: CloudEvent) -> None:
        self._ce = ce
        self._attributes = ce.attributes()
        self._data: Any = None
        self._decoded = False

    @property
    def cloudevent(self) -> CloudEvent:
        """The event as vebus carries it (`data` as bytes)."""
        return self._ce

    @property
    def id(self) -> str:
        return self._ce.id

    @property
    def source(self) -> str:
        return self._ce.source

    @property
    def type(self) -> str:
        return self._ce.type

    @property
    def specversion(self) -> str:
        return self._ce.specversion

    @property
    def time(self) -> str | None:
        return self._ce.time

    @property
    def subject(self) -> str | None:
        return self._ce.subject

    @property
    def datacontenttype(self) -> str | None:
        return self._ce.datacontenttype

    @property
    def extensions(self) -> dict[str, str]:
        return dict(self._ce.extensions)

    @property
    def raw(self) -> bytes:
        """`data` as the bytes that were sent."""
        return self._ce.data

    @property
    def data(self) -> Any:
        """`data` decoded: JSON as Python values, text as str, anything else as bytes."""
        if not self._decoded:
            self._data = _decode(self._ce)
            self._decoded = True
        return self._data

    def __getitem__(self, name: str) -> str:
        return self._attributes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._attributes)

    def __len__(self) -> int:
        return len(self._attributes)

    def to_dict(self) -> dict[str, Any]:
        """The event in the CloudEvents JSON format's shape (attributes and `data`)."""
        out: dict[str, Any] = dict(self._attributes)
        data = self.data
        if isinstance(data, bytes):
            import base64

            out["data_base64"] = base64.b64encode(data).decode("ascii")
        else:
            out["data"] = data
        return out

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, source={self.source!r})"


def _decode(ce: CloudEvent) -> Any:
    if not ce.data:
        return None
    if ce.is_json():
        try:
            return json.loads(ce.data)
        except ValueError:
            return ce.data
    if (ce.datacontenttype or "").lower().startswith("text/"):
        try:
            return ce.data.decode("utf-8")
        except UnicodeDecodeError:
            return ce.data
    return ce.data
