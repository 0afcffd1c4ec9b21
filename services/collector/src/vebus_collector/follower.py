"""Following one vCenter: log in, find where we were, catch up, tail, publish, checkpoint.

Resuming: the position is the later of the KV checkpoint and the last event of this
vCenter on the stream. If vCenter no longer has that event with the same createdTime, or
its newest key is behind ours (and not by a wrap past int32), its keys started again: a
new epoch, whose history is read from its start. Then history from the position's time is
read (vCenter filters by time, not by key) and keys already published are skipped.

Tailing: WaitForUpdatesEx on a small `latestPage`; only keys after the position are
published. When a page holds no key that follows the position directly and the page is
full, more events arrived than a page holds: history is read again to fill the gap.

A vCenter that cannot be reached or drops the session is retried with backoff, forever;
one vCenter failing never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from vebus.config import VCenterConfig
from vebus.publish import publish_all
from vebus.service import ServiceContext
from vebus_collector import mapping
from vebus_collector.checkpoint import CheckpointStore, last_published
from vebus_collector.events import to_message
from vebus_collector.position import Position, is_newer, key_distance, next_key, parse_time
from vebus_collector.vcenter import VCenterClient

__all__ = ["Follower"]

log = logging.getLogger(__name__)

#: seconds one WaitForUpdatesEx may block (how quickly a stop is noticed)
WAIT_SECONDS = 1
#: longest pause between reconnection attempts
MAX_RECONNECT_DELAY = 30.0
#: events published per batch (each batch waits for its acks, then moves the position)
PUBLISH_BATCH = 256


class Follower:
    """Follows one vCenter until the service stops."""

    def __init__(self, cfg: VCenterConfig, ctx: ServiceContext, store: CheckpointStore) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.store = store
        self.client = VCenterClient(cfg)
        self.position: Position | None = None
        self.saved: Position | None = None
        self.connected = False
        self.published = 0

    async def run(self) -> None:
        """Connect, resume, tail; on any failure log it and try again with backoff."""
        delay = 1.0
        saver = asyncio.create_task(self._save_periodically())
        try:
            while not self.ctx.stopping.is_set():
                try:
                    await asyncio.to_thread(self.client.connect)
                    self.connected = True
                    log.info(
                        "%s: connected to %s (%s)",
                        self.cfg.name,
                        self.cfg.url,
                        self.client.full_name,
                    )
                    delay = 1.0
                    await self._resume()
                    await self._tail()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.connected = False
                    log.warning(
                        "%s: %s: %s; reconnecting in %.0fs",
                        self.cfg.name,
                        self.cfg.url,
                        _describe(e),
                        delay,
                    )
                    await asyncio.to_thread(self.client.close)
                    await self._sleep(delay)
                    delay = min(delay * 2, MAX_RECONNECT_DELAY)
        finally:
            saver.cancel()
            await asyncio.to_thread(self.client.close)
            await self._save()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), seconds)

    async def _resume(self) -> None:
        if self.position is None:
            stored = await self.store.load()
            on_stream = await last_published(self.ctx.js, self.cfg.name)
            self.position = on_stream if on_stream and on_stream.after(stored) else stored
            self.saved = stored
            if self.position is not None:
                log.info("%s: resuming after %s", self.cfg.name, self.position)
        pos = self.position
        if pos is None or pos.key is None:
            if pos is None and self.cfg.start == "latest":
                newest = await asyncio.to_thread(self.client.latest, 1)
                if newest:
                    e = newest[0]
                    self.position = Position(
                        epoch=0, key=int(e.key), created_time=_iso(e.createdTime)
                    )
                else:
                    self.position = Position()
                log.info("%s: no checkpoint; starting with new events", self.cfg.name)
                await self._save()
                return
            events = await asyncio.to_thread(self.client.history, None)
            self.position = pos or Position()
            await self._publish(events)
            return
        since = parse_time(pos.created_time) if pos.created_time else None
        events = await asyncio.to_thread(self.client.history, since)
        if await self._keys_went_back(events):
            events = await asyncio.to_thread(self.client.history, None)
        await self._publish(events)

    async def _keys_went_back(self, events: Sequence[Any]) -> bool:
        """True (and a new epoch started) when vCenter's keys started again."""
        pos = self.position
        assert pos is not None
        assert pos.key is not None
        same = next((e for e in events if int(e.key) == pos.key), None)
        if same is not None:
            if pos.created_time is None or _iso(same.createdTime) == pos.created_time:
                return False
            why = f"event {pos.key} now has createdTime {_iso(same.createdTime)}"
        else:
            newest = await asyncio.to_thread(self.client.latest, 1)
            if not newest or is_newer(int(newest[0].key), pos.key):
                if newest:
                    log.warning(
                        "%s: event %s (our checkpoint) is no longer in vCenter's history; "
                        "events between it and the oldest vCenter still has may be lost",
                        self.cfg.name,
                        pos.key,
                    )
                return False
            why = f"its newest key {int(newest[0].key)} is behind our {pos.key}"
        self.position = Position(epoch=pos.epoch + 1)
        log.warning(
            "%s: vCenter's event keys started again (%s): a restored or rebuilt vCenter; "
            "publishing its events as epoch %d",
            self.cfg.name,
            why,
            pos.epoch + 1,
        )
        return True

    async def _tail(self) -> None:
        await asyncio.to_thread(self.client.open_tail, self.cfg.page_size)
        self.ctx.ready = True
        while not self.ctx.stopping.is_set():
            page = await asyncio.to_thread(self.client.wait_page, WAIT_SECONDS)
            if not page:
                continue
            pos = self.position
            assert pos is not None
            new = [e for e in page if is_newer(int(e.key), pos.key)]
            if not new:
                continue
            keys = {int(e.key) for e in new}
            if (
                pos.key is not None
                and next_key(pos.key) not in keys
                and len(page) >= self.cfg.page_size
            ):
                log.info("%s: more events than one page; reading history", self.cfg.name)
                since = parse_time(pos.created_time) if pos.created_time else None
                new = await asyncio.to_thread(self.client.history, since)
            await self._publish(new)

    async def _publish(self, events: Sequence[Any]) -> None:
        """Publish the events after the position, in key order, moving the position."""
        pos = self.position
        assert pos is not None
        base = pos.key
        fresh = [e for e in events if is_newer(int(e.key), base)]
        if not fresh:
            return
        anchor = base if base is not None else min(int(e.key) for e in fresh) - 1
        fresh.sort(key=lambda e: key_distance(int(e.key), anchor))
        unique: dict[int, Any] = {}
        for e in fresh:
            unique.setdefault(int(e.key), e)
        ordered = list(unique.values())
        max_payload = self.ctx.nc.max_payload
        for i in range(0, len(ordered), PUBLISH_BATCH):
            batch = ordered[i : i + PUBLISH_BATCH]
            messages = []
            last = pos
            for e in batch:
                msg, last = to_message(
                    e,
                    vcenter=self.cfg.name,
                    source=self.cfg.url,
                    epoch=pos.epoch,
                    api_version=self.client.api_version,
                    max_payload=max_payload,
                )
                messages.append(msg)
            await publish_all(self.ctx.js, messages)
            self.position = last
            self.published += len(batch)
        log.debug(
            "%s: published %d event(s), now at %s", self.cfg.name, len(ordered), self.position
        )

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(float(self.cfg.checkpoint_interval))
            try:
                await self._save()
            except Exception as e:
                log.warning("%s: checkpoint not saved: %r", self.cfg.name, e)

    async def _save(self) -> None:
        if self.position is not None and self.position != self.saved:
            await self.store.save(self.position)
            self.saved = self.position


def _iso(value: Any) -> str:
    """createdTime in the same form as the event's `data.CreatedTime`."""
    return mapping.rfc3339(value)


def _describe(e: BaseException) -> str:
    msg = getattr(e, "msg", None) or str(e) or ""
    return f"{type(e).__name__}: {msg}".strip().rstrip(":")
