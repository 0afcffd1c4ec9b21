"""Replay jobs: a replay asked for over the HTTP API outlives the replica that runs it.

A job is kept in NATS KV (`replay.<id>` in the state bucket): which dead letters
(`selection`, and `upto`, the last dead-letter id when the replay was asked for, so that
dead letters stored meanwhile, such as the replayed events failing again, are not part of
it), the route and rate, and the progress: `cursor`, the id of the last dead letter
handled, and the counts. Its runner writes it, compare-and-set on the entry's revision,
after every dead letter and at least every HEARTBEAT seconds.

Each dead letter is published, acknowledged and deleted before the next one starts
(`vebus.bus.dlq.replay_selection`). A runner that dies (SIGKILL, lost host) leaves the job
`running` with an old heartbeat; after LEASE a replica (another one, or the same one
restarted) takes it over, compare-and-set again, and continues after the cursor. The dead
letter that was in flight is replayed again: same Msg-Id, so JetStream drops the second
copy when it comes within the stream's duplicate window, and it is deleted. A replica
that stops on SIGTERM finishes its dead letter in flight and leaves its jobs to be taken
over the same way.

States: running -> done | cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from typing import Literal

import msgspec
import nats.errors
from nats.js import JetStreamContext

from vebus import aio, names
from vebus.bus.dlq import ReplayOutcome, Selection, iter_dead_letters, replay_selection
from vebus.errors import NotFoundError, StaleRevisionError, VebusError
from vebus.timespec import format_time, utcnow
from vebus_deadletter.state import StateStore

__all__ = ["HEARTBEAT", "LEASE", "JobNotFoundError", "JobRunner", "ReplayJob"]

log = logging.getLogger(__name__)

#: how often a running job's record is written even when no dead letter was handled
HEARTBEAT = 1.0
#: a running job whose record is older than this is taken over
LEASE = 5.0
#: how often a replica looks for jobs to take over
SCAN_INTERVAL = 2.0
#: errors kept in a job's record (the latest)
MAX_ERRORS = 10
_PREFIX = "replay"


class JobNotFoundError(NotFoundError):
    """No replay job has that id."""


class ReplayJob(msgspec.Struct, frozen=True, kw_only=True):
    """One replay of a selection of dead letters, and how far it got."""

    id: str
    state: Literal["running", "done", "cancelled"]
    created: str
    selection: Selection
    #: the last VEBUS_DLQ id when the replay was asked for: later dead letters are not in it
    upto: int
    #: the route the events go to; None: each dead letter's own route
    to_route: str | None
    #: dead letters per second; 0: no limit
    rate: float
    #: dead letters selected when the job was created
    total: int
    #: every selected dead letter with an id up to this one has been handled
    cursor: int = 0
    replayed: int = 0
    #: replayed or purged by someone else meanwhile
    gone: int = 0
    #: left as dead letters (see `errors`)
    failed: int = 0
    errors: list[str] = msgspec.field(default_factory=list)
    #: the replica running it, and when it last wrote this record
    owner: str
    heartbeat: str
    finished: str | None = None
    #: who asked for it (the console's signed-in operator); "" when nobody said
    by: str = ""

    def key(self) -> str:
        return f"{_PREFIX}.{self.id}"

    def stale(self, now: dt.datetime) -> bool:
        """Running, and its runner has not written for more than LEASE."""
        if self.state != "running":
            return False
        try:
            beat = dt.datetime.fromisoformat(self.heartbeat)
        except ValueError:
            return True
        return (now - beat).total_seconds() > LEASE


_decoder = msgspec.json.Decoder(ReplayJob)


class _Handle:
    """A job being run here: its record and revision, written one at a time."""

    def __init__(self, store: StateStore, job: ReplayJob, revision: int, owner: str) -> None:
        self.store = store
        self.job = job
        self.revision = revision
        self.owner = owner
        self.stop = asyncio.Event()
        #: another replica took the job over, or it was cancelled
        self.lost = False
        self._lock = asyncio.Lock()

    async def save(self, **changes: object) -> bool:
        """Write the record with `changes`; False (and stop) when it is no longer ours."""
        async with self._lock:
            if self.lost:
                return False
            new = msgspec.structs.replace(self.job, heartbeat=format_time(utcnow()), **changes)
            try:
                self.revision = await self.store.update(
                    new.key(), msgspec.json.encode(new), self.revision
                )
            except StaleRevisionError:
                current = await self.store.get(new.key())
                self.lost = True
                self.stop.set()
                if current is not None:
                    self.job = _decoder.decode(current[0])
                log.info(
                    "replay %s: %s; this replica stops running it",
                    new.id,
                    f"now {self.job.state}, owner {self.job.owner}" if current else "removed",
                )
                return False
            self.job = new
            return True

    async def record(self, outcome: ReplayOutcome) -> None:
        """Count one dead letter's outcome and move the cursor past it."""
        job = self.job
        errors = job.errors
        if outcome.status == "failed":
            errors = [*errors, f"{outcome.dead_letter.id}: {outcome.error}"][-MAX_ERRORS:]
        await self.save(
            cursor=outcome.dead_letter.id,
            replayed=job.replayed + (outcome.status == "replayed"),
            gone=job.gone + (outcome.status == "gone"),
            failed=job.failed + (outcome.status == "failed"),
            errors=errors,
        )

    async def heartbeat(self, stopping: asyncio.Event) -> None:
        """Write the record every HEARTBEAT seconds; on `stopping`, stop the job here."""
        async for _ in aio.until_stopped(self.stop):
            if await aio.sleep(HEARTBEAT, stopping):
                self.stop.set()
                return
            try:
                await self.save()
            except (nats.errors.Error, TimeoutError, VebusError) as e:
                log.warning("replay %s: heartbeat not written: %r", self.job.id, e)


class JobRunner:
    """Creates, runs, cancels and takes over replay jobs on this replica."""

    def __init__(
        self,
        js: JetStreamContext,
        store: StateStore,
        *,
        instance: str,
        stopping: asyncio.Event,
    ) -> None:
        self._js = js
        self._store = store
        self._instance = instance
        self._stopping = stopping
        self._running: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this replica runs now."""
        return list(self._running)

    async def submit(
        self, selection: Selection, *, to_route: str | None, rate: float, by: str = ""
    ) -> ReplayJob:
        """Record a new job for the dead letters `selection` picks now, and start it here."""
        info = await self._js.stream_info(names.DLQ_STREAM)
        upto = int(info.state.last_seq or 0)
        total = 0
        async for _ in iter_dead_letters(self._js, selection=selection, upto=upto):
            total += 1
        now = format_time(utcnow())
        job = ReplayJob(
            id=uuid.uuid4().hex[:12],
            state="running" if total else "done",
            created=now,
            selection=selection,
            upto=upto,
            to_route=to_route,
            rate=rate,
            total=total,
            cursor=upto if not total else 0,
            owner=self._instance,
            heartbeat=now,
            finished=now if not total else None,
            by=by,
        )
        revision = await self._store.create(job.key(), msgspec.json.encode(job))
        log.info(
            "replay %s: %d dead letter(s) (%s) to %s at %s/s%s",
            job.id,
            total,
            selection.describe(),
            f"route {to_route}" if to_route else "their routes",
            f"{rate:g}" if rate else "unlimited",
            f", asked by {by}" if by else "",
        )
        if total:
            self._start(job, revision)
        return job

    async def get(self, job_id: str) -> ReplayJob:
        """The job's current record; JobNotFoundError if there is none."""
        found = await self._store.get(f"{_PREFIX}.{job_id}")
        if found is None:
            raise JobNotFoundError(f"no replay job with id {job_id}")
        return _decoder.decode(found[0])

    async def all(self) -> list[ReplayJob]:
        """Every job on record, newest first."""
        jobs = []
        async for _, value, _ in self._store.scan(_PREFIX):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                jobs.append(_decoder.decode(value))
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    async def cancel(self, job_id: str) -> ReplayJob:
        """Mark the job cancelled; its runner stops after the dead letter in flight."""
        key = f"{_PREFIX}.{job_id}"
        for _ in range(10):
            found = await self._store.get(key)
            if found is None:
                raise JobNotFoundError(f"no replay job with id {job_id}")
            job = _decoder.decode(found[0])
            if job.state != "running":
                return job
            new = msgspec.structs.replace(job, state="cancelled", finished=format_time(utcnow()))
            try:
                await self._store.update(key, msgspec.json.encode(new), found[1])
            except StaleRevisionError:
                continue  # its runner just wrote progress: read it again
            log.info("replay %s: cancelled after %d of %d", job.id, job.cursor, job.total)
            return new
        raise VebusError(f"replay job {job_id} changes too fast to cancel; try again")

    def _start(self, job: ReplayJob, revision: int) -> None:
        task = asyncio.create_task(self._run(_Handle(self._store, job, revision, self._instance)))
        self._running[job.id] = task
        task.add_done_callback(lambda _: self._running.pop(job.id, None))

    async def _run(self, handle: _Handle) -> None:
        job = handle.job
        beat = asyncio.create_task(handle.heartbeat(self._stopping))
        try:
            await replay_selection(
                self._js,
                job.selection,
                to_route=job.to_route,
                rate=job.rate,
                after=job.cursor,
                upto=job.upto,
                stopping=handle.stop,
                on_outcome=handle.record,
            )
            if not handle.stop.is_set():
                if await handle.save(state="done", cursor=job.upto, finished=format_time(utcnow())):
                    j = handle.job
                    log.info(
                        "replay %s: done: %d replayed, %d gone, %d failed",
                        j.id,
                        j.replayed,
                        j.gone,
                        j.failed,
                    )
            elif not handle.lost:
                log.info("replay %s: stopping here; another replica takes it over", job.id)
        except (nats.errors.Error, TimeoutError, VebusError) as e:
            log.error(
                "replay %s stopped after dead letter %d: %r; it is taken over in %.0fs",
                job.id,
                handle.job.cursor,
                e,
                LEASE,
            )
        finally:
            handle.stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def take_over(self) -> int:
        """Start here every running job whose runner stopped writing; returns how many."""
        now = utcnow()
        started = 0
        async for key, value, revision in self._store.scan(_PREFIX):
            try:
                job = _decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring unreadable replay job record %s", key)
                continue
            if job.id in self._running or not job.stale(now):
                continue
            mine = msgspec.structs.replace(
                job, owner=self._instance, heartbeat=format_time(utcnow())
            )
            try:
                revision = await self._store.update(key, msgspec.json.encode(mine), revision)
            except StaleRevisionError:
                continue  # another replica was quicker
            log.warning(
                "replay %s: taken over from %s (last heard %s), continuing after dead letter %d",
                job.id,
                job.owner,
                job.heartbeat,
                job.cursor,
            )
            self._start(mine, revision)
            started += 1
        return started

    async def take_over_forever(self) -> None:
        """Look for jobs to take over now and every SCAN_INTERVAL until stopping."""
        async for _ in aio.every(SCAN_INTERVAL, self._stopping):
            try:
                await self.take_over()
            except (nats.errors.Error, TimeoutError, VebusError) as e:
                log.warning("looking for replay jobs to take over failed: %r", e)

    async def finish(self) -> None:
        """Wait for the jobs running here to stop (after their dead letter in flight)."""
        tasks = list(self._running.values())
        if tasks:
            log.info("waiting for %d replay job(s) to stop", len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)
