"""Following one vCenter while this replica holds its lease: log in, find where we were,
catch up, tail, publish, checkpoint.

Resuming: the position is the later of the KV checkpoint (claimed: rewritten so that an
earlier leader can no longer move it) and the last event of this vCenter on the stream.
If vCenter no longer has that event with the same createdTime, or its newest key is behind
ours (and not by a wrap past int32), its keys started again: a new epoch, whose history is
read from its start. Otherwise history from the position's time is read page by page
(vCenter filters by time, not by key) and keys already published are skipped. A gap
between our key and the oldest vCenter still has is history lost (logged, counted).
`catchup_max_age` / `catchup_max_events` bound how far back a catch-up goes.

Tailing: WaitForUpdatesEx on a small `latestPage`; only keys after the position are
published. When a full page holds no key that follows the position directly, more events
arrived than a page holds: history is read again to fill the gap.

Failures: a vCenter that cannot be reached, refuses the login or drops the connection is
retried with backoff and jitter (the VCENTER_RETRY tenacity policy), forever; a session
that expires (NotAuthenticated) logs in again at once. A watchdog compares vCenter's newest
key with the last published one: behind for `stall_after` with nothing moving is a stall,
reported in /readyz and answered with a reconnect and catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any, Protocol, TypeVar

from pyVmomi import vim
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from vebus import aio
from vebus.bus.publish import OutgoingMessage
from vebus.config import VCenterConfig
from vebus.errors import VebusError
from vebus_collector import mapping
from vebus_collector.checkpoint import CheckpointStore
from vebus_collector.enrich import Enricher
from vebus_collector.errors import CheckpointConflictError, LeaseLostError, StallError
from vebus_collector.events import to_message
from vebus_collector.position import (
    Position,
    is_newer,
    key_distance,
    next_key,
    parse_time,
    to_int32,
)
from vebus_collector.publisher import EventPublisher
from vebus_collector.status import State, VCenterStatus

__all__ = ["VCENTER_RETRY", "Follower", "VCenterReader", "describe_error"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: seconds one WaitForUpdatesEx may block (how quickly a stop is noticed)
WAIT_SECONDS = 1
#: a NotAuthenticated this soon after logging in is not an expired session: back off
RELOGIN_GRACE = 3.0
#: vCenter ahead of us this long with no update arriving: read history, re-open the tail
#: (a quiet repair; `stall_after` later it is reported as a stall and reconnected)
RESYNC_AFTER = 5.0


def _retryable(e: BaseException) -> bool:
    return isinstance(e, Exception) and not isinstance(e, LeaseLostError)


#: reconnecting to a vCenter: forever, every error but a lost lease (the wait is the
#: follower's `_backoff`: exponential with jitter, restarting after a session that worked)
VCENTER_RETRY: dict[str, Any] = {
    "retry": retry_if_exception(_retryable),
    "stop": stop_never,
    "reraise": True,
}
#: first and longest pause between attempts, and the random part added to each
BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_JITTER = 1.0, 30.0, 1.0


class VCenterReader(Protocol):
    """What the follower needs from a vCenter (VCenterClient; fakes in unit tests)."""

    @property
    def api_version(self) -> str: ...
    @property
    def full_name(self) -> str: ...

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def latest(self, count: int = 1) -> list[Any]: ...
    def latest_key(self) -> int | None: ...
    def history_pages(self, since: dt.datetime | None) -> Iterator[list[Any]]: ...
    def open_tail(self, page_size: int) -> None: ...
    def wait_page(self, max_wait: int) -> list[Any] | None: ...


class Follower:
    """Follows one vCenter for one leadership term, until stopped or the lease is lost."""

    def __init__(
        self,
        cfg: VCenterConfig,
        *,
        client: VCenterReader,
        publisher: EventPublisher,
        store: CheckpointStore,
        stream_last: Callable[[], Awaitable[Position | None]],
        status: VCenterStatus,
        stopping: asyncio.Event,
        max_payload: int,
        executor: Executor | None = None,
        leader: Callable[[], bool] = lambda: True,
        enricher: Enricher | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.publisher = publisher
        self.store = store
        self.stream_last = stream_last
        self.status = status
        self.stopping = stopping
        self.max_payload = max_payload
        self.executor = executor
        self.leader = leader
        self.enricher = enricher
        self.position: Position | None = None
        self.saved: Position | None = None
        self.published = 0
        self._state: State = "connecting"
        self._stall_target: int | None = None
        self._kick = asyncio.Event()
        self._resync = asyncio.Event()
        self._attempt = 0
        self._healthy_at = 0
        #: monotonic time of the first failure since the last good session (None: fine)
        self.failing_since: float | None = None

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Follow until `stopping` is set; LeaseLostError when the lease goes."""
        saver = asyncio.create_task(self._save_periodically())
        watchdog = asyncio.create_task(self._watchdog())
        try:
            async for attempt in AsyncRetrying(
                **VCENTER_RETRY,
                wait=self._backoff,
                sleep=self._sleep,
                before_sleep=self._before_retry,
            ):
                with attempt:
                    self._attempt = attempt.retry_state.attempt_number
                    await self._session()
        finally:
            for task in (saver, watchdog):
                task.cancel()
            for task in (saver, watchdog):
                with contextlib.suppress(BaseException):
                    await task
        # only a clean stop gets here: write where we are for the next leader
        await self._save()

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run a blocking pyvmomi call in this vCenter's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args))

    def _backoff(self, state: RetryCallState) -> float:
        """Exponential with jitter, counting only the failures since the last good session."""
        failures = max(1, state.attempt_number - self._healthy_at)
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * float(2 ** min(failures - 1, 16)))
        return delay + random.uniform(0, BACKOFF_JITTER)

    async def _sleep(self, seconds: float) -> None:
        await aio.sleep(seconds, self.stopping)  # raises a cancel lost in an attempt

    async def _before_retry(self, state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        reason = describe_error(e) if e else "failed"
        if isinstance(e, VebusError):  # vebus.vsphere's errors name the vCenter and its URL
            log.warning("%s; trying again in %.1fs", reason, wait)
        else:
            log.warning(
                "%s: %s: %s; trying again in %.1fs", self.cfg.name, self.cfg.url, reason, wait
            )
        self._set_state("unreachable", reason)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(self.client.close), 5)

    def _set_state(self, state: State, error: str | None = None) -> None:
        self._state = state
        if self._stall_target is not None and state != "unreachable":
            self.status.set("stalled", self.status.error)
        else:
            self.status.set(state, error)

    async def _session(self) -> None:
        """One login: resume, then tail until stopped; logs in again on NotAuthenticated."""
        while not self.stopping.is_set():
            self._set_state("connecting", self.status.error)
            self._kick.clear()
            await self._call(self.client.connect)
            logged_in = time.monotonic()
            log.info("%s: connected to %s (%s)", self.cfg.name, self.cfg.url, self.client.full_name)
            try:
                await self._resume()
                await self._tail()
                return
            except vim.fault.NotAuthenticated:
                if time.monotonic() - logged_in < RELOGIN_GRACE:
                    raise
                log.warning(
                    "%s: the session is no longer valid (NotAuthenticated: expired or "
                    "terminated); logging in again",
                    self.cfg.name,
                )
                with contextlib.suppress(Exception):
                    await self._call(self.client.close)

    # ----------------------------------------------------------------- resuming

    async def _resume(self) -> None:
        self._set_state("catching_up")
        if self.position is None:
            stored = await self.store.claim()
            on_stream = await self.stream_last()
            self.position = on_stream if on_stream and on_stream.after(stored) else stored
            self.saved = stored
            if self.position is not None:
                log.info("%s: resuming after %s", self.cfg.name, self.position)
                self._show_position(self.position)
        pos = self.position
        if pos is None or pos.key is None:
            if pos is None and self.cfg.start == "latest":
                newest = await self._call(self.client.latest, 1)
                if newest:
                    e = newest[0]
                    self.position = Position(
                        epoch=0, key=int(e.key), created_time=_iso(e.createdTime)
                    )
                else:
                    self.position = Position()
                self._show_position(self.position)
                log.info("%s: no checkpoint; starting with new events", self.cfg.name)
                await self._save()
                return
            self.position = pos or Position()
            await self._catch_up(None, limits=True)
            return
        since = parse_time(pos.created_time) if pos.created_time else None
        if not await self._catch_up(since, limits=True, detect_restart=True):
            await self._catch_up(None, limits=True)

    async def _catch_up(
        self, since: dt.datetime | None, *, limits: bool, detect_restart: bool = False
    ) -> bool:
        """Publish what vCenter has from `since` on, page by page.

        With `detect_restart`, the first page is checked for keys that started again:
        then a new epoch begins and False is returned (read everything again)."""
        cutoff: dt.datetime | None = None
        skip_before: int | None = None
        if limits and self.cfg.catchup_max_age:
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.cfg.catchup_max_age)
            if since is None or since < cutoff:
                since = cutoff
        if limits and self.cfg.catchup_max_events:
            skip_before = await self._skip_before(self.cfg.catchup_max_events)
        pages = self.client.history_pages(since)
        try:
            first = True
            while True:
                page = await self._call(next, pages, None)
                if page is None:
                    break
                if first and detect_restart and await self._keys_went_back(page):
                    return False
                first = False
                await self._publish(page, check_gap=True, cutoff=cutoff, skip_before=skip_before)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await self._call(close)
        return True

    async def _skip_before(self, limit: int) -> int | None:
        """With `catchup_max_events`: the first key to publish, when the backlog is larger."""
        pos = self.position
        newest = await self._call(self.client.latest_key)
        if newest is None or pos is None or pos.key is None or not is_newer(newest, pos.key):
            return None
        backlog = key_distance(newest, pos.key)
        if backlog <= limit:
            return None
        first = to_int32(newest - limit + 1)
        log.warning(
            "%s: %d events since our position %s, more than catchup_max_events (%d): "
            "events %d to %d are skipped, publishing from %d",
            self.cfg.name,
            backlog,
            pos.key,
            limit,
            next_key(pos.key),
            to_int32(first - 1),
            first,
        )
        self.status.history_lost += backlog - limit
        return first

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
            newest = await self._call(self.client.latest_key)
            if newest is None or is_newer(newest, pos.key):
                return False  # still the same history (a gap, if any, is reported on publish)
            if newest == pos.key:
                return False
            why = f"its newest key {newest} is behind our {pos.key}"
        self.position = Position(epoch=pos.epoch + 1)
        log.warning(
            "%s: vCenter's event keys started again (%s): a restored or rebuilt vCenter; "
            "publishing its events as epoch %d",
            self.cfg.name,
            why,
            pos.epoch + 1,
        )
        return True

    # ------------------------------------------------------------------ tailing

    async def _tail(self) -> None:
        await self._call(self.client.open_tail, self.cfg.page_size)
        self._set_state("tailing", None)
        self._healthy_at = self._attempt
        self.failing_since = None
        async for _ in aio.until_stopped(self.stopping):  # a cancel lost in a publish: raised
            if self._resync.is_set():
                self._resync.clear()
                pos = self.position
                assert pos is not None
                since = parse_time(pos.created_time) if pos.created_time else None
                await self._catch_up(since, limits=False)
                await self._call(self.client.open_tail, self.cfg.page_size)
                continue
            page = await self._wait_page()
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
                await self._catch_up(since, limits=False)
                # events newer than what history returned are in this page
            await self._publish(new)

    async def _wait_page(self) -> list[Any] | None:
        """The next page, or StallError when the watchdog kicks while vCenter hangs."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self.client.wait_page, WAIT_SECONDS)
        kick: asyncio.Future[Any] = asyncio.ensure_future(self._kick.wait())
        waiting: set[asyncio.Future[Any]] = {fut, kick}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            kick.cancel()
        if not fut.done():
            fut.add_done_callback(_ignore_result)
            raise StallError(f"{self.cfg.name}: WaitForUpdatesEx does not return")
        if self._kick.is_set():
            self._kick.clear()
            page = fut.result()
            raise StallError(f"{self.cfg.name}: stalled ({len(page or [])} event(s) in the page)")
        return fut.result()

    # --------------------------------------------------------------- publishing

    async def _publish(
        self,
        events: Sequence[Any],
        *,
        check_gap: bool = False,
        cutoff: dt.datetime | None = None,
        skip_before: int | None = None,
    ) -> None:
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
        if check_gap and base is not None:
            gap = key_distance(int(ordered[0].key), base) - 1
            if gap > 0 and skip_before is None and cutoff is None:
                self._history_lost(base, int(ordered[0].key), gap)
        if skip_before is not None and base is not None:
            limit = key_distance(skip_before, base)
            ordered = [e for e in ordered if key_distance(int(e.key), base) >= limit]
        if cutoff is not None:
            kept = [e for e in ordered if _aware(e.createdTime) >= cutoff]
            if len(kept) < len(ordered):
                log.warning(
                    "%s: %d event(s) older than catchup_max_age (%s) skipped",
                    self.cfg.name,
                    len(ordered) - len(kept),
                    cutoff.isoformat(timespec="seconds"),
                )
                self.status.history_lost += len(ordered) - len(kept)
            ordered = kept
        if not ordered:
            return
        extensions: list[dict[str, str]] | None = None
        if self.enricher is not None:
            enricher = self.enricher
            extensions = await self._call(lambda: [enricher.extensions(e) for e in ordered])
        items: list[tuple[OutgoingMessage, Position]] = []
        for i, e in enumerate(ordered):
            items.append(
                to_message(
                    e,
                    vcenter=self.cfg.name,
                    source=self.cfg.url,
                    epoch=pos.epoch,
                    api_version=self.client.api_version,
                    max_payload=self.max_payload,
                    extensions=extensions[i] if extensions else None,
                )
            )
        await self.publisher.publish(items, self._acked)
        log.debug("%s: published %d event(s), now at %s", self.cfg.name, len(items), self.position)

    def _acked(self, pos: Position) -> None:
        self.position = pos
        self.published += 1
        self.status.published += 1
        self._show_position(pos)
        if self._stall_target is not None and not is_newer(self._stall_target, pos.key):
            self._stall_target = None
            log.info("%s: caught up again at key %s", self.cfg.name, pos.key)
            self._set_state(self._state)

    def _show_position(self, pos: Position) -> None:
        self.status.epoch, self.status.key = pos.epoch, pos.key

    def _history_lost(self, base: int, first: int, gap: int) -> None:
        self.status.history_lost += gap
        log.warning(
            "%s: HISTORY LOST: %d event(s) between key %d (our last published) and %d "
            "(the oldest vCenter returned) are no longer in vCenter's history (older than "
            "its event retention, or its ring moved past them while we were away) or not "
            "visible to %s; they cannot be published",
            self.cfg.name,
            gap,
            base,
            first,
            self.cfg.username,
        )

    # -------------------------------------------------------------- checkpoints

    async def _save_periodically(self) -> None:
        # stopped by cancellation only: a cancel lost in a save would save for ever
        async for _ in aio.every(float(self.cfg.checkpoint_interval), wait_first=True):
            try:
                await self._save()
            except Exception as e:
                log.warning("%s: checkpoint not saved: %r", self.cfg.name, e)

    async def _save(self) -> None:
        """Write the position (compare-and-set); never once the lease is gone."""
        pos = self.position
        if pos is None or pos == self.saved or not self.leader():
            return
        try:
            await self.store.save(pos)
        except CheckpointConflictError:
            if not self.leader():
                return
            log.warning(
                "%s: the checkpoint was written by another replica while we hold the lease "
                "(a stale leader); taking it back",
                self.cfg.name,
            )
            await self.store.claim()
            await self.store.save(pos)
        self.saved = pos

    # ----------------------------------------------------------------- watchdog

    async def _watchdog(self) -> None:
        """Compare vCenter's newest key with ours; behind without moving = a stall."""
        stall_after = float(self.cfg.stall_after)
        resync_after = min(RESYNC_AFTER, stall_after)
        interval = min(max(min(stall_after / 4, resync_after / 2), 0.05), 15.0)
        behind: tuple[Position | None, float] | None = None
        resynced = False
        async for _ in aio.every(interval, wait_first=True):  # until the term's cancel
            if self._state not in ("tailing", "catching_up"):
                behind = None
                continue
            try:
                newest = await self._call(self.client.latest_key)
            except Exception as e:  # the follower itself finds out and reconnects
                log.debug("%s: watchdog could not read the newest key: %r", self.cfg.name, e)
                continue
            self.status.vcenter_key = newest
            pos = self.position
            if newest is None or pos is None or not is_newer(newest, pos.key):
                behind = None
                continue
            now = time.monotonic()
            if behind is None or behind[0] != pos:
                behind, resynced = (pos, now), False
                continue
            waited = now - behind[1]
            if waited >= resync_after and not resynced and waited < stall_after:
                resynced = True
                self.status.resyncs += 1
                log.info(
                    "%s: vCenter is at key %s, the last published is %s, and no update "
                    "came for %.0fs: reading history and opening the tail again",
                    self.cfg.name,
                    newest,
                    pos.key,
                    waited,
                )
                self._resync.set()
                continue
            if waited >= stall_after and self._stall_target is None:
                self.status.stalls += 1
                self._stall_target = newest
                reason = (
                    f"vCenter is at key {newest}, the last published is {pos.key}, "
                    f"nothing moved for {now - behind[1]:.0f}s"
                )
                log.warning("%s: STALLED: %s; reconnecting and catching up", self.cfg.name, reason)
                self.status.set("stalled", reason)
                self._kick.set()
                behind = (pos, now)


def _iso(value: Any) -> str:
    """createdTime in the same form as the event's `data.CreatedTime`."""
    return mapping.rfc3339(value)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def describe_error(e: BaseException) -> str:
    """One line for a vCenter failure: vebus.vsphere's login errors as they are (they name
    the vCenter and say what to do), others with their class."""
    if isinstance(e, VebusError):
        return str(e)
    msg = getattr(e, "msg", None)
    if msg is None and not hasattr(e, "faultMessage"):
        msg = str(e)  # not a vSphere fault (a socket error, ...): its own words
    # a vSphere fault without a message prints as its whole multi-line structure: one line
    text = " ".join(str(msg or "").split())
    return f"{type(e).__name__}: {text}".strip().rstrip(":")
