"""One event as a row of the live view and the history: who did what to which object.

The body is decoded into `Probe`, a struct of only the fields a row shows (msgspec skips
the rest without building them), which is what keeps a history search over 100,000 events
in a second or two. `words` is what plain-word filters look in: type, vCenter, object,
user.
"""

from __future__ import annotations

import msgspec

from vebus import names
from vebus.bus.cloudevent import CloudEvent

__all__ = ["OBJECT_FIELDS", "Probe", "Row", "probe", "row_of"]

#: the entity a vSphere event is about, most specific first (VEBA's field names)
OBJECT_FIELDS = ("Vm", "Host", "Ds", "Net", "Dvs", "ComputeResource", "Datacenter")


class _Named(msgspec.Struct, frozen=True):
    Name: str | None = None


class Probe(msgspec.Struct, frozen=True):
    """The fields of a vSphere event's data that a row shows; everything else is skipped."""

    UserName: str | None = None
    FullFormattedMessage: str | None = None
    Vm: _Named | None = None
    Host: _Named | None = None
    Ds: _Named | None = None
    Net: _Named | None = None
    Dvs: _Named | None = None
    ComputeResource: _Named | None = None
    Datacenter: _Named | None = None

    def objects(self) -> list[str]:
        """The names of every object the event names, most specific first."""
        out = []
        for field in OBJECT_FIELDS:
            named = getattr(self, field)
            if named is not None and named.Name:
                out.append(named.Name)
        return out


_EMPTY = Probe()
_probe = msgspec.json.Decoder(Probe)


def probe(body: bytes) -> Probe:
    """The row fields of a body; empty for a body that is not a JSON object of that shape."""
    if not body or body[:1] != b"{":
        return _EMPTY
    try:
        return _probe.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return _EMPTY


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """An event as one line of a table."""

    id: str
    type: str
    #: the event class (the subject's last token, or the type)
    kind: str
    #: the source token of the subject: the vCenter's name, `webhook`, `checks`, ...
    vcenter: str
    time: str
    object: str
    user: str
    message: str
    #: its VEBUS_EVENTS sequence when read from the stream (history); 0 live
    seq: int = 0
    #: when the stream stored it (history)
    stored: str = ""

    def words(self) -> str:
        """What plain-word filters search in, lower-case."""
        return f"{self.type} {self.kind} {self.vcenter} {self.object} {self.user}".lower()


def row_of(subject: str, event: CloudEvent, *, seq: int = 0, stored: str = "") -> Row:
    """The row of `event`, received on `subject`."""
    _, source = names.stream_of_subject(subject)
    kind = subject.rsplit(".", 1)[-1] if source else (event.subject or event.type)
    p = probe(event.data) if event.is_json() else _EMPTY
    objects = p.objects()
    return Row(
        id=event.id,
        type=event.type,
        kind=event.subject or kind,
        vcenter=source,
        time=event.time or "",
        object=objects[0] if objects else "",
        user=p.UserName or "",
        message=(p.FullFormattedMessage or "")[:300],
        seq=seq,
        stored=stored,
    )
