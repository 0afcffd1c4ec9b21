"""A pyvmomi event as the CloudEvent vebus publishes (VEBA 0.8 compatible) on NATS."""

from __future__ import annotations

from typing import Any

import msgspec

from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import OutgoingMessage
from vebus.names import MSG_ID
from vebus_collector import mapping
from vebus_collector.position import Position

__all__ = [
    "PAYLOAD_MARGIN",
    "event_id",
    "msg_id",
    "to_message",
]

#: later hops add headers: every message stays this far under the server's max_payload
PAYLOAD_MARGIN = 64 * 1024


def event_id(epoch: int, key: int) -> str:
    """The CloudEvent id: the key in a vCenter's first epoch, `<epoch>-<key>` after a reset."""
    return str(key) if epoch == 0 else f"{epoch}-{key}"


def msg_id(vcenter: str, epoch: int, key: int) -> str:
    """The Nats-Msg-Id JetStream deduplicates on: `<vcenter>:<epoch>:<key>`."""
    return f"{vcenter}:{epoch}:{key}"


def to_message(
    event: Any,
    *,
    vcenter: str,
    source: str,
    epoch: int,
    api_version: str,
    max_payload: int,
    extensions: dict[str, str] | None = None,
) -> tuple[OutgoingMessage, Position]:
    """The message for one vSphere event and the position it moves the collector to."""
    key = int(event.key)
    cls = mapping.event_class(event)
    # only the properties of the vCenter's own API version: VEBA's key set, not pyvmomi's
    data = mapping.to_data(event, version=api_version or None)
    created = data.get("CreatedTime")
    body = msgspec.json.encode(data)
    ce = CloudEvent(
        id=event_id(epoch, key),
        source=source,
        type=f"com.vmware.vsphere.{cls}.v0",
        time=created,
        subject=cls,
        extensions={
            **(extensions or {}),
            "eventclass": mapping.event_kind(event),
            "vsphereapiversion": api_version,
        },
        data=body,
    )
    extra = {
        MSG_ID: msg_id(vcenter, epoch, key),
        names.H_VCENTER: vcenter,
        names.H_EPOCH: str(epoch),
        names.H_KEY: str(key),
    }
    headers = to_headers(ce, extra)
    limit = max_payload - PAYLOAD_MARGIN
    size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
    if size > limit:
        notice = {
            "Key": key,
            "ChainId": data.get("ChainId"),
            "CreatedTime": created,
            "EventClass": cls,
            "Truncated": True,
            "OriginalSize": len(body),
            "FullFormattedMessage": str(data.get("FullFormattedMessage") or "")[:2000],
        }
        body = msgspec.json.encode(notice)
        headers[names.CE_PREFIX + names.TRUNCATED_EXTENSION] = "true"
    out = OutgoingMessage(names.event_subject(vcenter, cls), body, headers)
    return out, Position(epoch=epoch, key=key, created_time=created)
