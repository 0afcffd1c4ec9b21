"""Route consumers: the routes one replica of a delivering service runs, changed live.

A delivering service (the dispatcher for sinks, the functions service for functions) owns
some routes, by their sink kind, and delivers each one's events from VEBUS_ROUTES. Every
route has its own durable pull consumer (named by the service: `vebus-dispatch-<route>`,
`vebus-fn-<route>`, see vebus.names; shared by all the service's replicas), its own worker
with its own `max_in_flight`, and its own sink, so a slow or failing sink holds back only
its own route. A route with a `rate` shares one send schedule with every replica
(vebus.delivery.ratelimit). The decision for each message is vebus.delivery.route's.

`RouteConsumers.apply` takes each new view of the routes (vebus.routing.source) and makes
the workers match it: a new route gets a worker, a changed one (sink or delivery) is
stopped gracefully and started again, a paused one is stopped (its events wait in
VEBUS_ROUTES), and a removed one drains: it keeps delivering until its queue stays empty
(what the filter routed to it before it swapped) or DRAIN_MAX, and is then retired: its
consumer deleted if empty and the route still absent from (or no longer owned in) the
running set, re-read at that moment. A route that could not start (NATS unavailable, a
consumer the other service has not retired yet after a change of sink kind) is tried again
every RESTART_EVERY seconds.

Deleting an empty consumer of the work queue loses nothing: one created later gets what the
stream still holds. A consumer with events left is kept, so they are delivered if the route
comes back. A worker whose consumer vanished (another replica deleted it in a race with a
re-add, or an operator did) creates it again and carries on; acks to the deleted consumer
are lost, so the events it had in flight come again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from vebus import aio, names
from vebus.bus.consume import PullWorker
from vebus.bus.streams import ensure_consumer
from vebus.config import Route
from vebus.delivery.ratelimit import RateLimiter, rate_bucket
from vebus.delivery.route import PausedSeconds, RouteDelivery
from vebus.delivery.sink import Sink
from vebus.errors import ConfigError, VebusError
from vebus.routing.source import ReplicaStatus, RouteSource, RouteView
from vebus.routing.store import PauseBook, PauseRecord

__all__ = [
    "ACK_MARGIN",
    "MAX_DELIVER_EXTRA",
    "MakeSink",
    "RouteConsumers",
    "route_consumer_config",
]

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
#: how often a route that could not start is tried again
RESTART_EVERY = 5.0
#: routes started at once (each creates or checks its consumer: a round trip or two)
START_CONCURRENCY = 16
#: creating a route's consumer when JetStream is slow to answer (thousands of consumers
#: being created at once): the request is repeated, which is harmless (ensure_consumer
#: finds the consumer if the first request made it)
CONSUMER_RETRY: dict[str, Any] = {
    "retry": retry_if_exception_type(nats.errors.TimeoutError),
    "stop": stop_after_attempt(4),
    "wait": wait_exponential_jitter(multiplier=0.5, max=4.0),
    "before_sleep": before_sleep_log(log, logging.WARNING),
    "reraise": True,
}

#: makes the sink of a route (ConfigError if it cannot: a missing extra, a bad template)
MakeSink = Callable[[Route], Sink]


def route_consumer_config(route: Route, durable: str) -> ConsumerConfig:
    """The durable consumer `durable` all of a service's replicas share for `route`."""
    d = route.delivery
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=names.route_subject(route.name),
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


class RouteConsumers:
    """The routes this replica of `service` delivers (those whose sink kind it `owns`)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        service: str,
        instance: str,
        source: RouteSource,
        owns: Callable[[str], bool],
        durable: Callable[[str], str],
        make_sink: MakeSink,
        pauses: PauseBook,
        paused_seconds: PausedSeconds | None = None,
        rate_replicas: int = 1,
    ) -> None:
        self.js = js
        self.service = service
        self.instance = instance
        self.source = source
        self.pauses = pauses
        #: whether a route with this sink kind is this service's
        self._owns = owns
        #: the durable consumer name of a route, for this service
        self._durable = durable
        self._make_sink = make_sink
        self._paused_seconds = paused_seconds or pauses.paused_seconds
        self._rate_replicas = rate_replicas
        #: what should run: this service's routes of the current view
        self.desired: dict[str, Route] = {}
        self.running: dict[str, _Running] = {}
        self.draining: dict[str, _Running] = {}
        self.revision = 0
        self.view = source.view
        self._route_errors: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._rate_kv: KeyValue | None = None
        self._rate_kv_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- route sets

    async def apply(self, view: RouteView, *, strict: bool = False) -> None:
        """Run this service's routes of `view` from now on, then report its revision.

        A route that cannot start is reported in the status and tried again later
        (`strict`: raised, for the config file's routes at start, where it is the user's
        mistake to fix).
        """
        async with self._lock:
            before = self.desired
            self.view = view
            self.desired = {n: r for n, r in view.routes.items() if self._owns(r.sink_kind)}
            await self._reconcile(strict=strict)
            self.revision = view.revision
            for name in sorted(before.keys() - self.desired.keys()):
                if self.pauses.is_paused(name):  # no worker to drain it: retire it now
                    self._spawn(self._retire(name, "was paused"))
        log.info(
            "routes revision %d: %s delivers %s", view.revision, self.service,
            ", ".join(sorted(self.running)) or "no route",
        )  # fmt: skip

    async def set_pauses(self, records: dict[str, PauseRecord]) -> None:
        async with self._lock:
            before = {n for n in self.pauses.records if self.pauses.is_paused(n)}
            self.pauses.records = dict(records)
            after = {n for n in records if self.pauses.is_paused(n)}
            for name in sorted(after - before):
                log.info("route %s paused: its events wait in %s", name, names.ROUTES_STREAM)
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
        await self._start_missing(strict=strict)

    async def _start_missing(self, *, strict: bool = False) -> None:
        """Start a worker for each desired route that has none (and is not paused), up to
        START_CONCURRENCY at once: a thousand routes start in the time of a few dozen
        consumer round trips, not a thousand."""
        self._route_errors = {}
        todo = [
            route
            for name, route in self.desired.items()
            if name not in self.running and not self.pauses.is_paused(name)
        ]
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(route: Route) -> None:
            async with gate:
                try:
                    self.running[route.name] = await self._start(route)
                except (ConfigError, VebusError, nats.errors.Error) as e:
                    if strict:
                        raise
                    text = "; ".join(e.errors) if isinstance(e, ConfigError) else str(e)
                    self._route_errors[route.name] = f"route {route.name}: not started: {text}"
                    log.error("route %s: not started: %s; trying again in %.0fs",
                              route.name, text, RESTART_EVERY)  # fmt: skip

        if len(todo) == 1:
            await start(todo[0])
            return
        results = await asyncio.gather(*(start(r) for r in todo), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def follow(self, source: RouteSource, stopping: asyncio.Event) -> None:
        """Until `stopping`: run the routes `source` says (its live changes and pauses), and
        retry the routes that failed to start. What a delivering service does once ready."""
        async with source.follow(stopping, on_routes=self.apply, on_pauses=self.set_pauses):
            await self.restart_failed(stopping)

    async def restart_failed(self, stopping: asyncio.Event) -> None:
        """Until `stopping`: every RESTART_EVERY seconds, start the routes that failed to."""
        async for _ in aio.every(RESTART_EVERY, stopping, wait_first=True):
            if self._route_errors:
                async with self._lock:
                    await self._start_missing()

    async def _start(self, route: Route) -> _Running:
        durable = self._durable(route.name)
        async for attempt in AsyncRetrying(**CONSUMER_RETRY):
            with attempt:
                await ensure_consumer(
                    self.js, names.ROUTES_STREAM, route_consumer_config(route, durable)
                )
        sink = self._make_sink(route)
        limiter = None
        if route.delivery.rate is not None:
            async with self._rate_kv_lock:  # routes start concurrently: one bucket
                if self._rate_kv is None:
                    self._rate_kv = await rate_bucket(self.js, replicas=self._rate_replicas)
            limiter = RateLimiter(self._rate_kv, route.name, route.delivery.rate)
        delivery = RouteDelivery(
            self.js, route, sink, limiter=limiter, paused_seconds=self._paused_seconds
        )
        worker = PullWorker(
            self.js,
            stream=names.ROUTES_STREAM,
            durable=durable,
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
        name, durable = run.route.name, self._durable(run.route.name)
        if self.running.get(name) is not run:
            if self.draining.get(name) is run and not run.consumer_gone:
                log.info("removed route %s: its consumer %s was deleted", name, durable)
                run.consumer_gone = True  # retired by another replica: done here too
                run.stop.set()
            return  # being stopped: a new worker ensures the consumer when it starts
        try:
            await self.js.consumer_info(names.ROUTES_STREAM, durable)
        except NotFoundError:
            pass
        else:
            return  # it is there (a cluster's consumer between leaders answers no one)
        await ensure_consumer(
            self.js, names.ROUTES_STREAM, route_consumer_config(run.route, durable)
        )
        log.warning(
            "route %s: its consumer %s was deleted while the route runs: created it again; "
            "events still in %s are delivered, those that were in flight may come twice",
            name, durable, names.ROUTES_STREAM,
        )  # fmt: skip

    # ---------------------------------------------------------------- removed routes

    def _drain(self, run: _Running) -> None:
        """Keep a removed route's worker until its queue has stayed empty, then stop it and
        retire the route."""
        name = run.route.name
        durable = self._durable(name)
        self.draining[name] = run

        async def drain() -> None:
            started = time.monotonic()
            deadline = started + DRAIN_MAX
            quiet = 0
            async for _ in aio.every(1.0, run.stop):
                if time.monotonic() >= deadline:
                    break
                try:
                    info = await self.js.consumer_info(names.ROUTES_STREAM, durable)
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

    async def _owned_now(self) -> set[str]:
        """The routes of the running set this service owns, read now."""
        kinds = await self.source.kinds()
        return {name for name, kind in kinds.items() if self._owns(kind)}

    async def _retire(self, name: str, how: str) -> None:
        """Delete a removed route's consumer if nothing waits in it and the route is still
        not this service's in the running set; else keep it (and say why, if events wait)."""
        durable = self._durable(name)
        waiting = 0
        for check in range(RETIRE_CHECKS):
            if check:
                await asyncio.sleep(0.5)
            try:
                info = await self.js.consumer_info(names.ROUTES_STREAM, durable)
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
                name, how, waiting, durable, names.ROUTES_STREAM,
                names.route_subject(name), names.ROUTES_STREAM, durable,
            )  # fmt: skip
            return
        async with self._lock:  # no apply in between: this replica cannot start it meanwhile
            if name in self.desired or name in self.running or name in self.draining:
                return
            try:
                if name in await self._owned_now():  # back, though not running here
                    log.info("removed route %s is in the route set again: consumer %s kept",
                             name, durable)  # fmt: skip
                    return
                await self.js.delete_consumer(names.ROUTES_STREAM, durable)
            except NotFoundError:
                log.debug("removed route %s: consumer %s already deleted", name, durable)
            except (nats.errors.Error, VebusError) as e:
                log.warning("removed route %s: could not delete its consumer %s: %r",
                            name, durable, e)  # fmt: skip
            else:
                log.info("removed route %s: deleted its empty consumer %s", name, durable)

    async def sweep(self) -> None:
        """Retire the consumers of routes removed while no replica ran to drain them (or
        before consumers were retired at all): run once at start, in the background. Each
        goes through `_retire`, so one with events waiting is kept and reported."""
        try:
            durables: list[str] = []
            while batch := await self.js.consumers_info(names.ROUTES_STREAM, len(durables)):
                durables += [c.name for c in batch]
            current = await self._owned_now()
        except (nats.errors.Error, VebusError) as e:
            log.warning("could not look for consumers of removed routes: %r", e)
            return
        for durable in sorted(durables):
            name = names.route_of_durable(durable)
            if name is None or self._durable(name) != durable:
                continue  # not a route consumer of this service
            if name in current or name in self.desired:
                continue
            self._spawn(self._retire(name, f"was removed while no {self.service} ran"))

    def spawn_sweep(self) -> None:
        """`sweep` in the background (closed with the drains)."""
        self._spawn(self.sweep())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self, view: RouteView) -> None:
        """Run the routes a replica starts with. The config file's routes are applied
        strictly: one that cannot start (a sink that cannot be built, a function not
        declared) is the user's mistake, raised as ConfigError with every worker stopped,
        for the service to exit 2 with (vebus.runtime.service)."""
        try:
            await self.apply(view, strict=view.from_config)
        except ConfigError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop every worker (each finishes what it has in flight)."""
        runs = list(self.running.values()) + list(self.draining.values())
        self.running.clear()
        for run in runs:
            run.stop.set()
        await asyncio.gather(*(run.finish() for run in runs))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def status(self) -> ReplicaStatus:
        """What this replica answers on the routes status subject."""
        return ReplicaStatus(
            service=self.service,
            instance=self.instance,
            revision=self.revision,
            routes=sorted(self.running),
            paused=sorted(n for n in self.pauses.records if self.pauses.is_paused(n)),
            missing_env=dict(self.view.missing_env),
            errors=list(self.view.errors) + list(self._route_errors.values()),
        )
