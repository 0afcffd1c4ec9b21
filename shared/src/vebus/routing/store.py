"""Routes in NATS KV: the stored route set and the paused routes.

The bucket `vebus_routes` (names.ROUTES_BUCKET) holds two kinds of key:

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
vebus.routing.source is where every service reads the routes it runs from (this module is
the storage under it).
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
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from vebus import names
from vebus.bus.kv import ensure_bucket
from vebus.config import Route, env_references, parse_config
from vebus.errors import ConfigError, StaleRevisionError, VebusError

__all__ = [
    "PAUSE_PREFIX",
    "ROUTES_KEY",
    "PauseBook",
    "PausePeriod",
    "PauseRecord",
    "RouteSet",
    "RouteStore",
    "check_routes",
    "decode_pause",
    "decode_route_set",
    "missing_env",
    "open_route_store",
    "parse_routes",
    "route_name",
    "sink_kind",
]

log = logging.getLogger(__name__)

#: the key of the stored route set; pause records are `paused.<route>`
ROUTES_KEY = "routes"
PAUSE_PREFIX = "paused."
#: pause periods kept per route: older ones cannot overlap an event still in the route
MAX_PERIODS = 200


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
    #: who made the last change (pause or resume): user@host, or the console's operator
    by: str = ""

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
    return PAUSE_PREFIX + names.token(route)


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

    async def put(
        self,
        routes: Sequence[Any],
        *,
        source: str = "",
        by: str | None = None,
        last: int | None = None,
    ) -> int:
        """Store `routes` (validated by the caller) and return the new revision.

        `by` names who applied them (default: this process's user@host). With `last`, the
        write succeeds only if the stored set is still at that revision (0: none stored
        yet); otherwise StaleRevisionError: someone applied another set meanwhile, and
        overwriting it would undo their change unseen.
        """
        doc = msgspec.json.encode(
            RouteSet(
                routes=list(routes),
                applied_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                applied_by=by or _who(),
                source=source,
            )
        )
        if last is None:
            return await self.kv.put(ROUTES_KEY, doc)
        try:
            if last == 0:
                return await self.kv.create(ROUTES_KEY, doc)
            return await self.kv.update(ROUTES_KEY, doc, last=last)
        except (KeyWrongLastSequenceError, nats.js.errors.APIError) as e:
            current = await self.get()
            raise StaleRevisionError(
                f"the stored route set is at revision {current[1] if current else 0}, not "
                f"{last}: someone applied routes meanwhile; read them again and re-apply"
            ) from e

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

    async def set_paused(
        self, route: str, paused: bool, *, now: float | None = None, by: str | None = None
    ) -> bool:
        """Pause or resume `route`; False when it already was in that state.

        `by` names who did it (default: this process's user@host). A compare-and-set
        loop: two operators pausing at once write one period.
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
            value = msgspec.json.encode(
                PauseRecord(route=route, periods=periods[-MAX_PERIODS:], by=by or _who())
            )
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
            f"the stored route set ({names.ROUTES_BUCKET}/{ROUTES_KEY}) is unreadable: {e}"
        ) from None


def decode_pause(value: bytes) -> PauseRecord | None:
    try:
        return msgspec.json.decode(value, type=PauseRecord)
    except msgspec.DecodeError as e:
        log.warning("a pause record in %s is unreadable (%s); ignoring it", names.ROUTES_BUCKET, e)
        return None


async def open_route_store(js: JetStreamContext, *, replicas: int) -> RouteStore:
    """The routes bucket (created when missing), with the stream's replica count."""
    kv = await ensure_bucket(
        js,
        names.ROUTES_BUCKET,
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
    return [
        name for name, default in env_references(raw_route) if default is None and name not in env
    ]


def route_name(raw_route: Any) -> str:
    """A written route's name, for messages about a route that did not parse."""
    return str(raw_route.get("name")) if isinstance(raw_route, dict) else "?"


def sink_kind(raw_route: Any) -> str:
    """A written route's sink kind (`webhook`, `function`, ...); "" if it has none."""
    sink = raw_route.get("sink") if isinstance(raw_route, dict) else None
    return str(sink.get("kind") or "") if isinstance(sink, dict) else ""


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
