"""The deadletter service's shared state in NATS KV: replay jobs and alert states.

Every replica reads and writes the same bucket; writes that must not race are
compare-and-set on the entry's revision (`update(..., revision)`), which raises
StaleRevisionError when someone else wrote first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from vebus import names
from vebus.bus.kv import ensure_bucket
from vebus.errors import StaleRevisionError

__all__ = ["StateStore"]

#: finished jobs and alert states are forgotten this long after their last change
STATE_TTL = 7 * 86400.0


class StateStore:
    """Raw entries of the state bucket: bytes by key, with revisions."""

    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int) -> StateStore:
        """The bucket, created when missing."""
        kv = await ensure_bucket(
            js,
            names.DEADLETTER_BUCKET,
            replicas=replicas,
            ttl=STATE_TTL,
            description="vebus deadletter: replay jobs and dead-letter alert states",
        )
        return cls(js, kv)

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """The value and revision of `key`, None when it does not exist."""
        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        return entry.value or b"", int(entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        """Write a new key; StaleRevisionError if it exists."""
        try:
            return int(await self._kv.create(key, value))
        except KeyWrongLastSequenceError:
            raise StaleRevisionError(f"{key} exists already") from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write `key` if its revision is still `revision` (0: if it does not exist)."""
        try:
            if revision == 0:
                return int(await self._kv.create(key, value))
            return int(await self._kv.update(key, value, last=revision))
        except KeyWrongLastSequenceError:
            raise StaleRevisionError(f"{key} changed since revision {revision}") from None

    async def scan(self, prefix: str) -> AsyncIterator[tuple[str, bytes, int]]:
        """Every live `prefix.*` key with its value and revision, oldest write first."""
        stream = f"KV_{names.DEADLETTER_BUCKET}"
        subject_prefix = f"$KV.{names.DEADLETTER_BUCKET}."
        seq = 1
        while True:
            try:
                raw = await self._js.get_msg(
                    stream, seq=seq, subject=f"{subject_prefix}{prefix}.>", next=True
                )
            except NotFoundError:
                return
            seq = int(raw.seq or 0) + 1
            if (raw.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE):
                continue
            yield (raw.subject or "").removeprefix(subject_prefix), raw.data or b"", seq - 1
