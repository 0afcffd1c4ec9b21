"""The dispatcher: delivers each route's events from VEBUS_ROUTES to the route's sink.

Every route has its own durable pull consumer (`vebus-dispatch-<route>`, shared by all
replicas), its own worker with its own `max_in_flight`, and its own sink (for HTTP sinks,
its own keep-alive connection pool), so a slow or failing sink holds back only its own
route. A route with a `rate` shares one send schedule with every replica (ratelimit.py).

Routes come from the set stored in NATS KV (`vebus routes apply`) when there is one, else
from the config file; the dispatcher follows the stored set and the paused routes live
(Dispatcher below) and answers `vebus routes apply` with the revision it runs and any
`${ENV}` variable a route needs that this process lacks.

A removed route's consumer is deleted once its queue is empty and the route is still absent
from the stored set (each is a Raft group on a cluster: kept for ever, they add up over
many applies); one with events left is kept, so they are delivered if the route comes back.
Deleting an empty consumer of the work queue loses nothing: one created later gets what
the stream still holds. A worker whose consumer vanished (another replica deleted it in a
race with a re-add, or an operator did) creates it again and carries on; acks to the
deleted consumer are lost, so the events it had in flight come again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from vebus.bus.consume import PullWorker
from vebus.bus.streams import ensure_consumer, ensure_streams
from vebus.config import Route
from vebus.delivery.ratelimit import RateLimiter, rate_bucket
from vebus.delivery.route import PausedSeconds, RouteDelivery
from vebus.errors import ConfigError, VebusError
from vebus.names import (
    DISPATCHER_DURABLE_PREFIX,
    ROUTES_STREAM,
    dispatcher_durable,
    route_subject,
)
from vebus.routing.store import (
    PauseBook,
    PauseRecord,
    ReplicaStatus,
    RouteSet,
    missing_env,
    open_route_store,
    parse_routes,
    route_name,
    serve_status,
    watch_routes,
)
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_dispatcher.sinks import Sink, SinkContext, build_sink

__all__ = ["ACK_MARGIN", "Dispatcher", "main", "route_consumer_config"]

log = logging.getLogger(__name__)

#: ack_wait beyond the per-attempt timeout: time to store a dead letter and send the ack
ACK_MARGIN = 10.0
#: JetStream stops redelivering this many deliveries past max_attempts (see DESIGN: poison)
MAX_DELIVER_EXTRA = 2
#: a removed route's worker stops once its queue was empty at this many checks in a row
#: (one a second: the filter replicas swap within milliseconds of the change)...
DRAIN_QUIET = 3
#: ...or after this long, whatever it still holds (it stays in VEBUS_ROUTES)
DRAIN_MAX = 60.0

#: a removed route's consumer is read this many times, half a second apart, before it is
#: kept as not empty (the server applies the last acks a moment after they were sent)
RETIRE_CHECKS = 3

#: the names of the routes in the current route set (re-read from the store)
CurrentRoutes = Callable[[], Awaitable[set[str]]]


def route_consumer_config(route: Route) -> ConsumerConfig:
    """The durable consumer all dispatcher replicas share for `route`."""
    d = route.delivery
    return ConsumerConfig(
        durable_name=dispatcher_durable(route.name),
        filter_subject=route_subject(route.name),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=float(d.timeout) + ACK_MARGIN,
        max_deliver=d.max_attempts + MAX_DELIVER_EXTRA,
        max_ack_pending=max(1000, 4 * d.max_in_flight),
    )


class _Running:
    """One route's worker in this replica: its consumer loop, sink and stop switch."""

    def __init__(self, route: Route, sink: Sink, worker: PullWorker) -> None:
        self.route = route
        self.sink = sink
        self.worker = worker
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: its consumer was deleted elsewhere while it drained: nothing left to retire
        self.consumer_gone = False

    async def finish(self) -> None:
        """Stop fetching, finish what is in flight, close the sink."""
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.sink.close()


class Dispatcher:
    """The routes this replica delivers, changed live as the stored route set changes.

    `desired` is what should run (the current revision's routes that resolved in this
    process, plus the previous version of a route whose new version lacks a variable);
    `reconcile` makes the workers match it: a new route gets a worker, a changed one
    (sink or delivery) is stopped gracefully and started again, a paused one is stopped
    (its events wait in VEBUS_ROUTES), and a removed one drains: it keeps delivering until
    its queue stays empty (what the filter routed to it before it swapped) or DRAIN_MAX,
    and is then retired: its consumer deleted if empty and the route absent from
    `current_routes()`, re-read at that moment.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        pauses: PauseBook,
        paused_seconds: PausedSeconds,
        current_routes: CurrentRoutes,
    ):
        self.ctx = ctx
        self.pauses = pauses
        self._current_routes = current_routes
        self._paused_seconds = paused_seconds
        self.user_agent = f"vebus-dispatcher/{version('vebus-dispatcher')}"
        self.desired: dict[str, Route] = {}
        self.running: dict[str, _Running] = {}
        self.draining: dict[str, _Running] = {}
        self.revision = 0
        self.missing: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self._route_errors: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._rate_kv: KeyValue | None = None
        self._drains: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- route sets

    def resolve(self, raw_routes: list[Any], revision: int) -> dict[str, Route]:
        """The routes of a stored revision, `${ENV}` resolved from this process's environment.

        A route whose variables this process lacks is not run in its new form (its events
        wait in VEBUS_ROUTES for a replica that has them); its previous form keeps running.
        """
        missing: dict[str, list[str]] = {}
        errors: list[str] = []
        desired: dict[str, Route] = {}
        for i, raw in enumerate(raw_routes):
            name = route_name(raw)
            lacking = missing_env(raw, os.environ)
            if lacking:
                for var in lacking:
                    missing.setdefault(var, []).append(name)
                log.error(
                    "revision %d: route %s needs environment variable(s) %s, not set here; "
                    "it is not started in this form",
                    revision, name, ", ".join(lacking),
                )  # fmt: skip
                if name in self.desired:
                    desired[name] = self.desired[name]
                continue
            try:
                (route,) = parse_routes([raw], service="dispatcher")
            except ConfigError as e:
                errors += [f"revision {revision}: {line.replace('routes[0]', f'routes[{i}]')}"
                           for line in e.errors]  # fmt: skip
                if name in self.desired:
                    desired[name] = self.desired[name]
                continue
            desired[route.name] = route
        self.missing, self.errors = missing, errors
        for line in errors:
            log.error("%s", line)
        return desired

    async def apply(
        self, desired: dict[str, Route], revision: int, *, strict: bool = False
    ) -> None:
        """Run `desired` from now on, then report `revision`.

        A route that cannot start is reported in the status (`strict`: raised, for the
        config file's routes at start, where it is the user's mistake to fix).
        """
        async with self._lock:
            before, self.desired = self.desired, desired
            await self._reconcile(strict=strict)
            self.revision = revision
            for name in sorted(before.keys() - desired.keys()):
                if self.pauses.is_paused(name):  # no worker to drain it: retire it now
                    self._spawn(self._retire(name, "was paused"))
        log.info(
            "routes revision %d: dispatching %s", revision,
            ", ".join(sorted(self.running)) or "no route",
        )  # fmt: skip

    async def set_pauses(self, records: dict[str, PauseRecord]) -> None:
        async with self._lock:
            before = {n for n in self.pauses.records if self.pauses.is_paused(n)}
            self.pauses.records = dict(records)
            after = {n for n in records if self.pauses.is_paused(n)}
            for name in sorted(after - before):
                log.info("route %s paused: its events wait in %s", name, ROUTES_STREAM)
            for name in sorted(before - after):
                log.info("route %s resumed", name)
            await self._reconcile()

    async def _reconcile(self, *, strict: bool = False) -> None:
        stops: list[_Running] = []
        for name, run in list(self.running.items()):
            want = self.desired.get(name)
            if want is None:
                del self.running[name]
                self._drain(run)
            elif want != run.route or self.pauses.is_paused(name):
                del self.running[name]
                stops.append(run)
        for name in self.desired:
            if name in self.draining:  # back before its drain ended: stop that worker first
                stops.append(self.draining.pop(name))
        await asyncio.gather(*(run.finish() for run in stops))
        self._route_errors = {}
        for name, route in self.desired.items():
            if name in self.running or self.pauses.is_paused(name):
                continue
            try:
                self.running[name] = await self._start(route)
            except (ConfigError, VebusError, nats.errors.Error) as e:
                if strict:
                    raise
                text = "; ".join(e.errors) if isinstance(e, ConfigError) else str(e)
                self._route_errors[name] = f"route {name}: not started: {text}"
                log.error("route %s: not started: %s", name, text)

    async def _start(self, route: Route) -> _Running:
        await ensure_consumer(self.ctx.js, ROUTES_STREAM, route_consumer_config(route))
        sink = build_sink(
            SinkContext(route=route, nc=self.ctx.nc, js=self.ctx.js, user_agent=self.user_agent)
        )
        limiter = None
        if route.delivery.rate is not None:
            if self._rate_kv is None:
                self._rate_kv = await rate_bucket(self.ctx.js, self.ctx.config)
            limiter = RateLimiter(self._rate_kv, route.name, route.delivery.rate)
        delivery = RouteDelivery(
            self.ctx.js, route, sink, limiter=limiter, paused_seconds=self._paused_seconds
        )
        worker = PullWorker(
            self.ctx.js,
            stream=ROUTES_STREAM,
            durable=dispatcher_durable(route.name),
            handler=delivery.handle,
            max_in_flight=route.delivery.max_in_flight,
            # a slot that frees is refilled at once, not after a fetch round trip;
            # a rate-limited route's events would only wait longer
            prefetch=0 if limiter else route.delivery.max_in_flight,
            on_consumer_gone=lambda: self._consumer_gone(run),  # `run`: bound below
        )
        run = _Running(route, sink, worker)
        run.task = asyncio.create_task(worker.run(run.stop), name=f"route-{route.name}")
        return run

    async def _consumer_gone(self, run: _Running) -> None:
        """The worker found its consumer gone: create it again if the route still runs here
        (what the stream holds for it is delivered, what was in flight comes again)."""
        name, durable = run.route.name, dispatcher_durable(run.route.name)
        if self.running.get(name) is not run:
            if self.draining.get(name) is run and not run.consumer_gone:
                log.info("removed route %s: its consumer %s was deleted", name, durable)
                run.consumer_gone = True  # retired by another replica: done here too
                run.stop.set()
            return  # being stopped: a new worker ensures the consumer when it starts
        try:
            await self.ctx.js.consumer_info(ROUTES_STREAM, durable)
        except NotFoundError:
            pass
        else:
            return  # it is there (a cluster's consumer between leaders answers no one)
        await ensure_consumer(self.ctx.js, ROUTES_STREAM, route_consumer_config(run.route))
        log.warning(
            "route %s: its consumer %s was deleted while the route runs: created it again; "
            "events still in %s are delivered, those that were in flight may come twice",
            name, durable, ROUTES_STREAM,
        )  # fmt: skip

    def _drain(self, run: _Running) -> None:
        """Keep a removed route's worker until its queue has stayed empty, then stop it and
        retire the route."""
        name = run.route.name
        self.draining[name] = run

        async def drain() -> None:
            started = time.monotonic()
            deadline = started + DRAIN_MAX
            quiet = 0
            while not run.stop.is_set() and time.monotonic() < deadline:
                try:
                    info = await self.ctx.js.consumer_info(ROUTES_STREAM, dispatcher_durable(name))
                    empty = info.num_pending == 0 and info.num_ack_pending == 0
                except NotFoundError:  # another replica retired it
                    log.info("removed route %s: its consumer was deleted", name)
                    run.consumer_gone = True
                    break
                except (nats.errors.Error, VebusError):
                    empty = False
                quiet = quiet + 1 if empty else 0
                if quiet >= DRAIN_QUIET:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stop.wait(), 1.0)
            # a stop from outside: the route came back, or this replica stops
            retire = not run.stop.is_set() and not run.consumer_gone
            await run.finish()
            if self.draining.get(name) is run:
                del self.draining[name]
            log.info("removed route %s: its worker stopped", name)
            if retire:
                await self._retire(name, f"drained for {time.monotonic() - started:.0f} s")

        log.info("route %s removed: delivering what it holds, then stopping", name)
        self._spawn(drain())

    async def _retire(self, name: str, how: str) -> None:
        """Delete a removed route's consumer if nothing waits in it and the route is still
        absent from the current route set; else keep it (and say why, if events wait)."""
        durable = dispatcher_durable(name)
        for check in range(RETIRE_CHECKS):
            if check:
                await asyncio.sleep(0.5)
            try:
                info = await self.ctx.js.consumer_info(ROUTES_STREAM, durable)
            except NotFoundError:
                log.debug("removed route %s: its consumer %s is already deleted", name, durable)
                return
            except nats.errors.Error as e:
                log.warning("removed route %s: consumer %s kept (could not read it: %r)",
                            name, durable, e)  # fmt: skip
                return
            waiting = info.num_pending + info.num_ack_pending
            if not waiting:
                break
        if waiting:
            log.warning(
                "removed route %s %s and %d event(s) still wait in its consumer %s: kept, "
                "so they are delivered if the route comes back (to drop them: "
                "`nats stream purge %s --subject %s`, then `nats consumer rm %s %s`)",
                name, how, waiting, durable,
                ROUTES_STREAM, route_subject(name), ROUTES_STREAM, durable,
            )  # fmt: skip
            return
        async with self._lock:  # no apply in between: this replica cannot start it meanwhile
            if name in self.desired or name in self.running or name in self.draining:
                return
            try:
                if name in await self._current_routes():  # back, though not running here
                    log.info("removed route %s is in the route set again: consumer %s kept",
                             name, durable)  # fmt: skip
                    return
                await self.ctx.js.delete_consumer(ROUTES_STREAM, durable)
            except NotFoundError:
                log.debug("removed route %s: consumer %s already deleted", name, durable)
            except (nats.errors.Error, VebusError) as e:
                log.warning("removed route %s: could not delete its consumer %s: %r",
                            name, durable, e)  # fmt: skip
            else:
                log.info("removed route %s: deleted its empty consumer %s", name, durable)

    async def sweep(self) -> None:
        """Retire the consumers of routes removed while no dispatcher ran to drain them
        (or before consumers were retired at all): run once at start, in the background.
        Each goes through `_retire`, so one with events waiting is kept and reported."""
        try:
            durables: list[str] = []
            while batch := await self.ctx.js.consumers_info(ROUTES_STREAM, len(durables)):
                durables += [c.name for c in batch]
            current = await self._current_routes()
        except (nats.errors.Error, VebusError) as e:
            log.warning("could not look for consumers of removed routes: %r", e)
            return
        for durable in sorted(durables):
            name = durable.removeprefix(DISPATCHER_DURABLE_PREFIX)
            if name == durable or name in current or name in self.desired:
                continue  # not a dispatcher's, or its route is in the set
            self._spawn(self._retire(name, "was removed while no dispatcher ran"))

    def spawn_sweep(self) -> None:
        """`sweep` in the background (closed with the drains)."""
        self._spawn(self.sweep())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def close(self) -> None:
        """Stop every worker (each finishes what it has in flight)."""
        runs = list(self.running.values()) + list(self.draining.values())
        self.running.clear()
        for run in runs:
            run.stop.set()
        await asyncio.gather(*(run.finish() for run in runs))
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            service="dispatcher",
            instance=self.ctx.settings.instance,
            revision=self.revision,
            routes=sorted(self.running),
            paused=sorted(n for n in self.pauses.records if self.pauses.is_paused(n)),
            missing_env=self.missing,
            errors=self.errors + list(self._route_errors.values()),
        )


async def _body(ctx: ServiceContext, *, paused_seconds: PausedSeconds | None = None) -> None:
    await ensure_streams(ctx.js, ctx.config)
    store = await open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    pauses = PauseBook(await store.pauses())

    async def current_routes() -> set[str]:
        stored = await store.get()
        if stored is None:
            return {r.name for r in ctx.config.routes}
        return {route_name(raw) for raw in stored[0].routes}

    dispatcher = Dispatcher(ctx, pauses, paused_seconds or pauses.paused_seconds, current_routes)
    stored = await store.get()
    if stored is None:
        # the config file's routes, as before routes could be stored: a sink that cannot
        # be built is the user's config mistake, reported at start
        try:
            await dispatcher.apply({r.name: r for r in ctx.config.routes}, 0, strict=True)
        except ConfigError as e:
            await dispatcher.close()
            for line in e.errors:
                log.error("%s", line)
            raise SystemExit(2) from None
    else:
        route_set, revision = stored
        await dispatcher.apply(dispatcher.resolve(route_set.routes, revision), revision)
    status_sub = await serve_status(ctx.nc, dispatcher.status)
    dispatcher.spawn_sweep()

    async def on_routes(route_set: RouteSet | None, revision: int) -> None:
        if route_set is None:
            log.info("stored routes deleted: dispatching the config file's routes")
            dispatcher.missing, dispatcher.errors = {}, []
            await dispatcher.apply({r.name: r for r in ctx.config.routes}, 0)
        else:
            await dispatcher.apply(dispatcher.resolve(route_set.routes, revision), revision)

    ctx.ready = True
    try:
        async with watch_routes(
            store,
            ctx.stopping,
            on_routes=on_routes,
            on_pauses=dispatcher.set_pauses,
            known_revision=dispatcher.revision,
        ):
            await ctx.stopping.wait()
    finally:
        with contextlib.suppress(Exception):
            await status_sub.unsubscribe()
        await dispatcher.close()


async def main(settings: ServiceSettings) -> int:
    """Run the dispatcher until SIGTERM; returns the exit status."""
    return await run_service(settings, _body, version=version("vebus-dispatcher"))
