"""The one route source: which routes a service runs, and when that changes.

Every service that acts on routes reads them here, and nowhere else: the filter (to match
events), the dispatcher and the functions service (to deliver them), the deadletter service
(to name a route's sink kind, to check a replay target), and the `vebus` command. The
routes are the set stored in NATS KV (`vebus routes apply`, vebus.routing.store) when
there is one, else the config file's: a deployment that never applies routes runs its
file, as before routes could be stored.

A source parses the routes for its service's purpose:

- to match or to name them (filter, deadletter, CLI), `${ENV}` references in sinks stay as
  they are: those processes never need the sinks' secrets. A stored revision that does not
  parse leaves the running routes in place; the problem is reported (`RouteView.errors`)
  and the revision stays the old one.
- to deliver them (dispatcher, functions: `delivers` says which sink kinds), each of those
  routes' references is resolved from this process's environment. A route whose variables
  are missing here, or that does not parse, keeps its previous form (a new route waits:
  its events stay in VEBUS_ROUTES for a replica that has them) and is reported; the
  revision moves on. The other routes are parsed as for matching.

`follow` keeps the view current from a KV watch (and a re-read every RECHECK seconds, in
case the watch lost its place) and calls the service back with each new view and each
change of the paused routes. Every replica answers `vebus.control.routes.status` with what
it runs (`serve_status`), which is how `vebus routes apply` knows a change is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KV_DEL, KV_PURGE

from vebus import aio, names
from vebus.bus.control import gather
from vebus.config import Config, Route
from vebus.errors import ConfigError, VebusError
from vebus.routing.store import (
    PAUSE_PREFIX,
    ROUTES_KEY,
    PauseRecord,
    RouteSet,
    RouteStore,
    decode_route_set,
    missing_env,
    parse_routes,
    route_name,
    sink_kind,
)

__all__ = [
    "RECHECK",
    "ReplicaStatus",
    "RouteSource",
    "RouteView",
    "collect_statuses",
    "serve_status",
]

log = logging.getLogger(__name__)

#: how often a follower re-reads the bucket, in case its watch missed an update
RECHECK = 5.0
#: the pause records are re-read every this many RECHECK periods without an update
PAUSE_RECHECK_EVERY = 6
#: how routes are parsed (vebus.config.SERVICE_SECRETS): with their sinks' `${ENV}`
#: references resolved, or left as written
_SECRETS_OF_ROUTES, _NO_SECRETS = "dispatcher", "cli"


@dataclass(frozen=True)
class RouteView:
    """The routes a replica runs, as one consistent value (swapped whole, never edited)."""

    #: the stored revision they come from; 0: the config file's routes
    revision: int
    #: name -> route, in the order written
    routes: Mapping[str, Route]
    #: variable -> the routes that reference it and are not run in their new form here
    missing_env: Mapping[str, list[str]] = field(default_factory=dict)
    #: problems loading the revision (`revision N: routes[2].sink.url: ...`)
    errors: Sequence[str] = ()

    @property
    def from_config(self) -> bool:
        return self.revision == 0


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a replica answers on names.ROUTES_STATUS_SUBJECT."""

    service: str
    instance: str
    #: the stored revision it runs; 0: no stored routes, it runs its config file's
    revision: int
    routes: list[str] = msgspec.field(default_factory=list)
    paused: list[str] = msgspec.field(default_factory=list)
    #: variable name -> the routes that reference it (delivering services: not running)
    missing_env: dict[str, list[str]] = msgspec.field(default_factory=dict)
    #: problems other than missing variables (a revision it could not load, a sink error)
    errors: list[str] = msgspec.field(default_factory=list)
    #: the functions this replica declares (functions service): `vebus routes apply`
    #: refuses a route that names none of them
    functions: list[str] = msgspec.field(default_factory=list)


#: called with each new view of the routes
OnRoutes = Callable[[RouteView], Awaitable[None]]
#: called with every pause record whenever one changes
OnPauses = Callable[[dict[str, PauseRecord]], Awaitable[None]]


class RouteSource:
    """The routes of one service process: the stored set, else the config file's."""

    def __init__(
        self,
        store: RouteStore,
        config: Config,
        *,
        service: str,
        delivers: Callable[[str], bool] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self._config_routes = {r.name: r for r in config.routes}
        self._service = service
        #: the sink kinds whose routes this process delivers (their secrets resolved)
        self._delivers = delivers
        self._env = os.environ if env is None else env
        #: the routes this process runs now (the config file's until `load`)
        self.view = RouteView(revision=0, routes=self._config_routes)

    # ------------------------------------------------------------------ reading

    async def load(self) -> RouteView:
        """Read the route set now and make it the current view."""
        stored = await self.store.get()
        self.view = self._view(*stored) if stored else self._config_view()
        return self.view

    async def names(self) -> set[str]:
        """The names of the routes in the running set, read now (not parsed)."""
        return set(await self.kinds())

    async def kinds(self) -> dict[str, str]:
        """Route name -> sink kind of the running set, read now (not parsed)."""
        stored = await self.store.get()
        if stored is None:
            return {name: r.sink_kind for name, r in self._config_routes.items()}
        return {route_name(raw): sink_kind(raw) for raw in stored[0].routes}

    async def lookup(self, name: str) -> Route | None:
        """Route `name` of the running set, read now; None when there is no such route
        (or it does not parse here)."""
        stored = await self.store.get()
        if stored is None:
            return self._config_routes.get(name)
        for raw in stored[0].routes:
            if route_name(raw) == name:
                try:
                    (route,) = parse_routes([raw], service=_NO_SECRETS)
                except ConfigError:
                    return None
                return route
        return None

    def _delivered(self, raw: Any) -> bool:
        return self._delivers is not None and self._delivers(sink_kind(raw))

    def _config_view(self) -> RouteView:
        return RouteView(revision=0, routes=self._config_routes)

    def _view(self, route_set: RouteSet, revision: int) -> RouteView:
        """The view of a stored revision, given the current one (see the module docstring)."""
        if self._delivers is None:
            return self._matched(route_set, revision)
        return self._resolved(route_set, revision)

    def _matched(self, route_set: RouteSet, revision: int) -> RouteView:
        try:
            routes = parse_routes(route_set.routes, service=_NO_SECRETS)
        except ConfigError as e:
            errors = [f"revision {revision}: {line}" for line in e.errors]
            for line in errors:
                log.error("stored routes not loaded: %s", line)
            return RouteView(revision=self.view.revision, routes=self.view.routes, errors=errors)
        return RouteView(revision=revision, routes={r.name: r for r in routes})

    def _resolved(self, route_set: RouteSet, revision: int) -> RouteView:
        previous = self.view.routes
        missing: dict[str, list[str]] = {}
        errors: list[str] = []
        routes: dict[str, Route] = {}
        for i, raw in enumerate(route_set.routes):
            name = route_name(raw)
            delivered = self._delivered(raw)
            lacking = missing_env(raw, self._env) if delivered else []
            if lacking:
                for var in lacking:
                    missing.setdefault(var, []).append(name)
                log.error(
                    "revision %d: route %s needs environment variable(s) %s, not set here; "
                    "it is not started in this form",
                    revision, name, ", ".join(lacking),
                )  # fmt: skip
                if name in previous:
                    routes[name] = previous[name]
                continue
            try:
                (route,) = parse_routes(
                    [raw], service=_SECRETS_OF_ROUTES if delivered else _NO_SECRETS, env=self._env
                )
            except ConfigError as e:
                errors += [f"revision {revision}: {line.replace('routes[0]', f'routes[{i}]')}"
                           for line in e.errors]  # fmt: skip
                if name in previous:
                    routes[name] = previous[name]
                continue
            routes[route.name] = route
        for line in errors:
            log.error("%s", line)
        return RouteView(revision=revision, routes=routes, missing_env=missing, errors=errors)

    # ------------------------------------------------------------------ following

    @contextlib.asynccontextmanager
    async def follow(
        self,
        stopping: asyncio.Event,
        *,
        on_routes: OnRoutes,
        on_pauses: OnPauses | None = None,
    ) -> AsyncIterator[None]:
        """While the `async with` body runs, keep `view` current and call `on_routes` with
        each new view (and `on_pauses` when a pause record changes), until `stopping`.

        A KV watch gives changes within milliseconds; every RECHECK seconds without one
        the route set is read again anyway (the pause records less often: listing them
        costs more), so a watch that lost its place (a reconnect, a server restart) delays
        a change by seconds rather than for ever. However the body ends, the follower is
        cancelled and waited for on the way out: no change is applied after the body has
        torn down what it changes.
        """
        task = asyncio.create_task(self._follow(stopping, on_routes, on_pauses),
                                   name="follow-routes")  # fmt: skip
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _changed(self, route_set: RouteSet | None, revision: int, on: OnRoutes) -> None:
        if route_set is None:
            if self.view.from_config and not self.view.errors:
                return
            log.info("stored routes deleted: running the config file's routes")
            self.view = self._config_view()
        else:
            self.view = self._view(route_set, revision)
        await on(self.view)

    async def _follow(
        self, stopping: asyncio.Event, on_routes: OnRoutes, on_pauses: OnPauses | None
    ) -> None:
        seen = self.view.revision  # the newest revision handled (tried), loaded or not
        pause_revisions: dict[str, int] = {}
        idle = 0  # RECHECK periods without an update

        async def pauses_changed() -> None:
            if on_pauses is not None:
                await on_pauses(await self.store.pauses())

        async for _ in aio.until_stopped(stopping):
            watcher = None
            try:
                watcher = await self.store.kv.watchall()
                async for _ in aio.until_stopped(stopping):
                    try:
                        entry = await watcher.updates(timeout=RECHECK)  # type: ignore[no-untyped-call]
                    except (TimeoutError, nats.errors.TimeoutError):
                        try:
                            current = await self.store.get()
                        except VebusError as e:
                            log.error("%s; keeping the running routes", e)
                            continue
                        now = current[1] if current else 0
                        if now != seen:
                            await self._changed(current[0] if current else None, now, on_routes)
                            seen = now
                        idle += 1
                        if idle % PAUSE_RECHECK_EVERY == 0:
                            await pauses_changed()
                        continue
                    if entry is None:
                        continue  # the end of the initial values
                    if entry.key == ROUTES_KEY:
                        if entry.revision <= seen:
                            continue
                        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                            await self._changed(None, 0, on_routes)
                            seen = 0
                            continue
                        try:
                            route_set = decode_route_set(entry.value)
                        except VebusError as e:
                            log.error("%s; keeping the running routes", e)
                            seen = entry.revision
                            continue
                        # the revision counts as seen once handled: a change that raised
                        # is tried again when the watch restarts
                        await self._changed(route_set, entry.revision, on_routes)
                        seen = entry.revision
                    elif entry.key.startswith(PAUSE_PREFIX):
                        if pause_revisions.get(entry.key, 0) >= entry.revision:
                            continue
                        pause_revisions[entry.key] = entry.revision
                        await pauses_changed()
            except Exception as e:
                if stopping.is_set():
                    return
                if isinstance(e, nats.errors.Error | OSError):
                    log.warning("watching %s failed (%r); watching again in 1s",
                                names.ROUTES_BUCKET, e)  # fmt: skip
                else:  # a bug in applying a change: say so loudly, but keep following
                    log.exception("applying a change of %s failed; watching again in 1s",
                                  names.ROUTES_BUCKET)  # fmt: skip
                await aio.sleep(1.0, stopping)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------ replica status


async def serve_status(nc: Client, status: Callable[[], ReplicaStatus]) -> Subscription:
    """Answer names.ROUTES_STATUS_SUBJECT requests with `status()` (every replica answers)."""

    async def answer(msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(status()))

    return await nc.subscribe(names.ROUTES_STATUS_SUBJECT, cb=answer)


async def collect_statuses(nc: Client, wait: float = 1.0) -> list[ReplicaStatus]:
    """Every replica's status: one request, all answers that arrive within `wait` seconds."""
    out = []
    for data in await gather(nc, names.ROUTES_STATUS_SUBJECT, wait):
        with contextlib.suppress(msgspec.DecodeError):  # not a replica we understand
            out.append(msgspec.json.decode(data, type=ReplicaStatus))
    return out
