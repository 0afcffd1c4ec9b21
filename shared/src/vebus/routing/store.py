"""Routes in NATS KV: the stored route set, paused routes, and what each replica runs.

The bucket `vebus_routes` holds two kinds of key:

- `routes`: the whole route set as written (`${ENV}` references unresolved: secrets never
  go into NATS; each dispatcher resolves them from its own environment), one JSON document.
  Its KV revision is the route set's revision: `vebus routes apply` writes it, the filter
  and dispatcher replicas watch it and swap their routes live.
- `paused.<route>`: a route's pause record, the list of periods it was paused. The
  dispatcher does not fetch a paused route (its events wait in VEBUS_ROUTES) and subtracts
  the paused time that overlaps an event's time in the route from its age, so a pause does
  not expire events (`max_age`). Periods are kept, not only the current state, because an
  event that waited through two pauses must not count either.

When `routes` does not exist, the services run the routes of their config file, exactly
as before routes could be stored: a deployment that never applies keeps working unchanged.

Every filter and dispatcher replica answers requests on STATUS_SUBJECT (core NATS, no
queue group: all of them answer) with the revision it runs, the routes it paused and the
`${ENV}` variables it lacks; `vebus routes apply` finds the replicas with `$SRV.PING` (so
one that cannot answer the status request is noticed too) and waits until each reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from vebus.aio import raise_if_cancelled
from vebus.bus.kv import ensure_bucket
from vebus.config import _ENV_REF, Route, parse_config
from vebus.errors import ConfigError, VebusError
from vebus.names import token

__all__ = [
    "ROUTES_BUCKET",
    "ROUTES_KEY",
    "STATUS_SUBJECT",
    "PauseBook",
    "PauseRecord",
    "ReplicaStatus",
    "RouteSet",
    "RouteStore",
    "missing_env",
    "open_route_store",
    "parse_routes",
    "serve_status",
    "watch_routes",
]

log = logging.getLogger(__name__)

ROUTES_BUCKET = "vebus_routes"
ROUTES_KEY = "routes"
PAUSE_PREFIX = "paused."
#: filter and dispatcher replicas answer here (not under vebus.routes.>: that is a stream)
STATUS_SUBJECT = "vebus.control.routes.status"
#: pause periods kept per route: older ones cannot overlap an event still in the route
MAX_PERIODS = 200
#: how often a watcher re-reads the bucket, in case its watch missed an update
RECHECK = 5.0


class RouteSet(msgspec.Struct, frozen=True, kw_only=True):
    """The stored route set: the `routes:` list as written, and who applied it."""

    routes: list[Any]
    applied_at: str = ""
    applied_by: str = ""
    source: str = ""


class PausePeriod(msgspec.Struct, frozen=True, array_like=True):
    """One pause: start and end as epoch seconds (end None: still paused)."""

    start: float
    end: float | None = None


class PauseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A route's pauses, oldest first."""

    route: str
    periods: list[PausePeriod] = msgspec.field(default_factory=list)

    @property
    def paused(self) -> bool:
        return bool(self.periods) and self.periods[-1].end is None

    @property
    def since(self) -> float | None:
        return self.periods[-1].start if self.paused else None

    def paused_seconds(self, since: float, now: float) -> float:
        """Seconds paused between `since` and `now` (the overlap with every period)."""
        total = 0.0
        for p in self.periods:
            start = max(p.start, since)
            end = min(now if p.end is None else p.end, now)
            if end > start:
                total += end - start
        return total


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a filter or dispatcher replica answers on STATUS_SUBJECT."""

    service: str
    instance: str
    #: the stored revision it runs; 0: no stored routes, it runs its config file's
    revision: int
    routes: list[str] = msgspec.field(default_factory=list)
    paused: list[str] = msgspec.field(default_factory=list)
    #: variable name -> the routes that reference it (dispatcher: those routes not running)
    missing_env: dict[str, list[str]] = msgspec.field(default_factory=dict)
    #: problems other than missing variables (a revision it could not load, a sink error)
    errors: list[str] = msgspec.field(default_factory=list)


class PauseBook:
    """This replica's copy of every route's pause record, kept current by the watcher.

    `paused_seconds` is the dispatcher's PausedSeconds: how long the route was paused
    since a message entered it, which delivery.py takes off the message's age.
    """

    def __init__(self, records: Mapping[str, PauseRecord] | None = None) -> None:
        self.records: dict[str, PauseRecord] = dict(records or {})

    def is_paused(self, route: str) -> bool:
        record = self.records.get(route)
        return record is not None and record.paused

    def paused_seconds(self, route: str, since: dt.datetime) -> float:
        record = self.records.get(route)
        if record is None:
            return 0.0
        return record.paused_seconds(since.timestamp(), time.time())


def _pause_key(route: str) -> str:
    return PAUSE_PREFIX + token(route)


def _who() -> str:
    with contextlib.suppress(Exception):
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return socket.gethostname()


class RouteStore:
    """The routes bucket: the stored route set and pause records."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self) -> tuple[RouteSet, int] | None:
        """The stored route set and its revision; None when routes were never applied."""
        try:
            entry = await self.kv.get(ROUTES_KEY)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        return decode_route_set(entry.value), entry.revision or 0

    async def put(self, routes: Sequence[Any], *, source: str = "") -> int:
        """Store `routes` (validated by the caller) and return the new revision."""
        doc = RouteSet(
            routes=list(routes),
            applied_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            applied_by=_who(),
            source=source,
        )
        return await self.kv.put(ROUTES_KEY, msgspec.json.encode(doc))

    async def pauses(self) -> dict[str, PauseRecord]:
        """Every route's pause record, by route name."""
        out: dict[str, PauseRecord] = {}
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return out
        for key in keys:
            if not key.startswith(PAUSE_PREFIX):
                continue
            record = await self._pause_record(key)
            if record is not None:
                out[record.route] = record
        return out

    async def _pause_record(self, key: str) -> PauseRecord | None:
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        return decode_pause(entry.value) if entry.value else None

    async def set_paused(self, route: str, paused: bool, *, now: float | None = None) -> bool:
        """Pause or resume `route`; False when it already was in that state.

        A compare-and-set loop: two operators pausing at once write one period.
        """
        key = _pause_key(route)
        while True:
            now_ = time.time() if now is None else now
            try:
                entry = await self.kv.get(key)
                revision: int | None = entry.revision
                record = (decode_pause(entry.value) if entry.value else None) or PauseRecord(
                    route=route
                )
            except (KeyNotFoundError, NotFoundError):
                revision, record = None, PauseRecord(route=route)
            if record.paused == paused:
                return False
            periods = list(record.periods)
            if paused:
                periods.append(PausePeriod(now_))
            else:
                periods[-1] = PausePeriod(periods[-1].start, max(now_, periods[-1].start))
            value = msgspec.json.encode(PauseRecord(route=route, periods=periods[-MAX_PERIODS:]))
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
                return True
            except (KeyWrongLastSequenceError, nats.js.errors.APIError):
                # someone else wrote first (or a deleted key's marker): read again
                await asyncio.sleep(0.05)


def decode_route_set(value: bytes) -> RouteSet:
    try:
        return msgspec.json.decode(value, type=RouteSet)
    except msgspec.DecodeError as e:
        raise VebusError(
            f"the stored route set ({ROUTES_BUCKET}/{ROUTES_KEY}) is unreadable: {e}"
        ) from None


def decode_pause(value: bytes) -> PauseRecord | None:
    try:
        return msgspec.json.decode(value, type=PauseRecord)
    except msgspec.DecodeError as e:
        log.warning("a pause record in %s is unreadable (%s); ignoring it", ROUTES_BUCKET, e)
        return None


async def open_route_store(js: JetStreamContext, *, replicas: int) -> RouteStore:
    """The routes bucket (created when missing), with the stream's replica count."""
    kv = await ensure_bucket(
        js,
        ROUTES_BUCKET,
        replicas=replicas,
        history=5,
        description="vebus routes: the applied route set (${ENV} unresolved) and paused routes",
    )
    return RouteStore(kv)


# ------------------------------------------------------------------ parsing stored routes


def parse_routes(
    raw: Sequence[Any], *, service: str | None, env: Mapping[str, str] | None = None
) -> list[Route]:
    """Routes from their written form, validated as `routes:` in vebus.yaml would be.

    `service` decides whether `${ENV}` references in routes are resolved (the dispatcher)
    or left as they are (the filter and the CLI: they never need the sinks' secrets).
    ConfigError lists every problem, each with its path (`routes[2].sink.url`).
    """
    return parse_config({"routes": list(raw)}, env, service=service).routes


def missing_env(raw_route: Any, env: Mapping[str, str]) -> list[str]:
    """The `${NAME}` variables (without a default) that `raw_route` uses and `env` lacks."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for m in _ENV_REF.finditer(value):
                if m.group(1) not in env and m.group(2) is None and m.group(1) not in found:
                    found.append(m.group(1))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(raw_route)
    return found


def route_name(raw_route: Any) -> str:
    """A written route's name, for messages about a route that did not parse."""
    return str(raw_route.get("name")) if isinstance(raw_route, dict) else "?"


# ------------------------------------------------------------------ following the bucket

#: called with the stored route set and its revision, or (None, 0) when it was deleted
OnRoutes = Callable[[RouteSet | None, int], Awaitable[None]]
#: called with every pause record whenever one changes
OnPauses = Callable[[dict[str, PauseRecord]], Awaitable[None]]


@contextlib.asynccontextmanager
async def watch_routes(
    store: RouteStore,
    stopping: asyncio.Event,
    *,
    on_routes: OnRoutes,
    on_pauses: OnPauses | None = None,
    known_revision: int = 0,
) -> AsyncIterator[None]:
    """While the `async with` body runs, call `on_routes` for every new revision of the
    route set (and `on_pauses` when a pause record changes), until `stopping` is set.

    A KV watch gives changes within milliseconds; every RECHECK seconds without one the
    route set is read again anyway (the pause records every sixth time: listing them costs
    more), so a watch that lost its place (a reconnect, a server restart) delays a change by
    seconds rather than forever. However the body ends (a stop, an error), the watch is
    cancelled and waited for on the way out: no change is applied after the body has torn
    down what it changes.
    """
    watch = asyncio.create_task(
        _follow(store, stopping, on_routes, on_pauses, known_revision), name="watch-routes"
    )
    try:
        yield
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def _follow(
    store: RouteStore,
    stopping: asyncio.Event,
    on_routes: OnRoutes,
    on_pauses: OnPauses | None,
    known_revision: int,
) -> None:
    """The task of `watch_routes`: until `stopping` is set or it is cancelled."""
    revision = known_revision
    pause_revisions: dict[str, int] = {}
    idle = 0  # RECHECK periods without an update: pauses are re-read every sixth

    async def pauses_changed() -> None:
        if on_pauses is not None:
            await on_pauses(await store.pauses())

    while not stopping.is_set():
        raise_if_cancelled()  # a cancel lost in a change or a retry (vebus.aio)
        watcher = None
        try:
            watcher = await store.kv.watchall()
            while not stopping.is_set():
                raise_if_cancelled()
                try:
                    entry = await watcher.updates(timeout=RECHECK)  # type: ignore[no-untyped-call]
                except (TimeoutError, nats.errors.TimeoutError):
                    entry = None
                    try:
                        current = await store.get()
                    except VebusError as e:
                        log.error("%s; keeping the running routes", e)
                        continue
                    now = current[1] if current else 0
                    if now != revision:
                        await on_routes(current[0] if current else None, now)
                        revision = now
                    idle += 1
                    if on_pauses is not None and idle % 6 == 0:
                        await pauses_changed()
                    continue
                if entry is None:
                    continue  # the end of the initial values
                if entry.key == ROUTES_KEY:
                    if entry.revision <= revision:
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                        await on_routes(None, 0)
                        revision = 0
                        continue
                    try:
                        route_set = decode_route_set(entry.value)
                    except VebusError as e:
                        log.error("%s; keeping the running routes", e)
                        revision = entry.revision
                        continue
                    # the revision counts as seen once applied: a change that raised is
                    # tried again when the watch restarts
                    await on_routes(route_set, entry.revision)
                    revision = entry.revision
                elif entry.key.startswith(PAUSE_PREFIX) and on_pauses is not None:
                    if pause_revisions.get(entry.key, 0) >= entry.revision:
                        continue
                    pause_revisions[entry.key] = entry.revision
                    await pauses_changed()
        except Exception as e:
            if stopping.is_set():
                return
            if isinstance(e, nats.errors.Error | OSError):
                log.warning("watching %s failed (%r); watching again in 1s", ROUTES_BUCKET, e)
            else:  # a bug in applying a change: say so loudly, but keep following changes
                log.exception("applying a change of %s failed; watching again in 1s", ROUTES_BUCKET)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------ replica status


async def serve_status(nc: Client, status: Callable[[], ReplicaStatus]) -> Subscription:
    """Answer STATUS_SUBJECT requests with `status()` (every replica answers)."""

    async def answer(msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(status()))

    return await nc.subscribe(STATUS_SUBJECT, cb=answer)


async def collect_statuses(nc: Client, wait: float = 1.0) -> list[ReplicaStatus]:
    """Every replica's status: one request, all answers that arrive within `wait` seconds."""
    out = []
    for data in await _gather(nc, STATUS_SUBJECT, wait):
        with contextlib.suppress(msgspec.DecodeError):  # not a replica we understand
            out.append(msgspec.json.decode(data, type=ReplicaStatus))
    return out


async def ping(nc: Client, service: str, wait: float = 1.0) -> list[dict[str, Any]]:
    """`$SRV.PING.vebus-<service>`: every replica of the service that is connected."""
    answers = []
    for data in await _gather(nc, f"$SRV.PING.vebus-{service}", wait):
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(data))
    return [a for a in answers if isinstance(a, dict)]


async def _gather(nc: Client, subject: str, wait: float) -> list[bytes]:
    inbox = nc.new_inbox()
    got: list[bytes] = []

    async def collect(msg: Msg) -> None:
        got.append(msg.data)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return got


def instance_of(ping_answer: Mapping[str, Any]) -> str:
    """The replica's instance id from its `$SRV.PING` answer (service.py's metadata)."""
    meta = ping_answer.get("metadata") or {}
    return str(meta.get("instance") or ping_answer.get("id") or "?")


def check_routes(raw: Any, where: str) -> list[Any]:
    """The `routes:` list of a parsed file, validated; ConfigError says what is wrong.

    The file may be a whole vebus.yaml or hold only `routes:`; only the routes are taken.
    ${ENV} references in routes are checked where they are resolved, by each dispatcher.
    """
    if not isinstance(raw, dict) or "routes" not in raw:
        raise ConfigError([f"{where}: expected a mapping with a `routes:` list"])
    routes = raw["routes"] or []
    if not isinstance(routes, list):
        raise ConfigError([f"routes: expected a list, got {type(routes).__name__}"])
    parse_config(raw, os.environ, service="cli")
    return routes
