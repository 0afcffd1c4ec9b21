"""Checkpoints in NATS KV, and the last position the stream itself holds for a vCenter."""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from vebus import names
from vebus.bus import kv
from vebus.bus.publish import observed_write
from vebus_collector.errors import CheckpointConflictError
from vebus_collector.position import Position

__all__ = ["CheckpointStore", "ensure_bucket", "last_published"]

log = logging.getLogger(__name__)


async def ensure_bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    """The checkpoint bucket, created when missing."""
    return await kv.ensure_bucket(
        js,
        names.CHECKPOINT_BUCKET,
        replicas=replicas,
        description="vebus collector checkpoints: last published event per vCenter",
    )


class CheckpointStore:
    """Reads and writes one vCenter's checkpoint, only ever with compare-and-set.

    Every write names the revision this replica last read or wrote (`kv.update(last=...)`,
    `kv.create` when there is none): a replica that took the vCenter over rewrites the
    checkpoint first (`claim`), so a stale leader's next write fails with
    CheckpointConflictError instead of moving the checkpoint.
    """

    def __init__(self, kv: KeyValue, vcenter: str) -> None:
        self._kv = kv
        self._key = f"collector.{names.token(vcenter)}"
        #: the revision last read or written; None: the key had no value
        self.revision: int | None = None

    async def load(self) -> Position | None:
        """The stored position (remembering its revision for the next write)."""
        try:
            entry = await self._kv.get(self._key)
        except (KeyNotFoundError, NotFoundError) as e:
            # a deleted key keeps a marker revision: create() handles it
            self.revision = None
            log.debug("no checkpoint %s (%r)", self._key, e)
            return None
        self.revision = entry.revision
        if not entry.value:
            return None
        try:
            return msgspec.json.decode(entry.value, type=Position)
        except msgspec.DecodeError as e:
            log.warning("checkpoint %s is unreadable (%s); ignoring it", self._key, e)
            return None

    async def claim(self) -> Position | None:
        """Load the checkpoint and write it back, fencing off any earlier writer."""
        while True:
            pos = await self.load()
            if pos is None:
                return None
            try:
                self.revision = await self._kv.update(
                    self._key, msgspec.json.encode(pos), last=self.revision
                )
            except KeyWrongLastSequenceError:
                continue  # written meanwhile (by the replica we take over from): again
            return pos

    async def save(self, pos: Position) -> None:
        """Write `pos`; CheckpointConflictError when somebody else wrote since."""
        value = msgspec.json.encode(pos)
        try:
            subject = names.kv_subject(names.CHECKPOINT_BUCKET, self._key)
            if self.revision is None:
                self.revision = await observed_write(subject, self._kv.create(self._key, value))
            else:
                write = self._kv.update(self._key, value, last=self.revision)
                self.revision = await observed_write(subject, write)
        except KeyWrongLastSequenceError as e:
            raise CheckpointConflictError(
                f"checkpoint {self._key} was written by another replica"
            ) from e


async def last_published(js: JetStreamContext, vcenter: str) -> Position | None:
    """The position of the last event of `vcenter` stored in VEBUS_EVENTS, if any.

    The checkpoint is written in batches and the duplicate window is short: after a crash
    or a long stop, this is the truth about what was published.
    """
    subject = names.vcenter_subjects(vcenter)
    try:
        raw = await js.get_last_msg(names.EVENTS_STREAM, subject)
    except NotFoundError:
        return None
    h = raw.headers or {}
    try:
        return Position(
            epoch=int(h.get(names.H_EPOCH, "0")),
            key=int(h[names.H_KEY]),
            created_time=h.get("ce-time"),
        )
    except (KeyError, ValueError):
        return None
