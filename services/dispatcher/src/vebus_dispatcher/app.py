"""The dispatcher: delivers each route's events from VEBUS_ROUTES to the route's sink.

It owns every route whose sink is not a function (those are the functions service's) and
runs them with the shared route-consumer machinery (vebus.delivery.consumers: one durable
consumer `vebus-dispatch-<route>` per route shared by all replicas, its own worker,
in-flight bound and sink, so a slow or failing sink holds back only its own route; drains,
retirement, pauses) and the shared per-message decision (vebus.delivery.route: attempts,
backoff, max_age, rate, dead letters). What is the dispatcher's own is its sinks
(vebus_dispatcher.sinks: one module per sink kind).

Routes come from the route source (vebus.routing.source: the set stored in NATS KV when
there is one, else the config file), followed live; every replica answers `vebus routes
apply` with the revision it runs and any `${ENV}` variable a route needs that this process
lacks.
"""

from __future__ import annotations

import contextlib
import logging
from importlib.metadata import version

import aiohttp

from vebus import names
from vebus.bus.streams import ensure_streams
from vebus.config import Route
from vebus.delivery.consumers import RouteConsumers
from vebus.delivery.route import PausedSeconds
from vebus.delivery.sink import Sink
from vebus.routing.source import RouteSource, serve_status
from vebus.routing.store import PauseBook, open_route_store
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_dispatcher.sinks import SinkContext, build_sink
from vebus_dispatcher.sinks.httpclient import shared_session

__all__ = ["FUNCTION_SINK", "main", "owns"]

log = logging.getLogger(__name__)

#: the sink kind the functions service delivers: the dispatcher leaves those routes alone
FUNCTION_SINK = names.FUNCTION_SINK


def owns(sink_kind: str) -> bool:
    """Whether a route with this sink kind is the dispatcher's."""
    return sink_kind != FUNCTION_SINK


async def _body(ctx: ServiceContext, *, paused_seconds: PausedSeconds | None = None) -> None:
    await ctx.startup("streams", lambda: ensure_streams(ctx.js, ctx.config.stream_settings()))
    store = await ctx.startup(
        "route store", lambda: open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    )
    source = RouteSource(store, ctx.config, service="dispatcher", delivers=owns)
    pauses = PauseBook(await ctx.startup("paused routes", store.pauses))
    user_agent = f"vebus-dispatcher/{version(names.distribution('dispatcher'))}"
    # one keep-alive pool for every HTTP sink (vebus_dispatcher.sinks.httpclient)
    http = shared_session(user_agent)
    try:
        await _run(ctx, source, pauses, http, user_agent, paused_seconds)
    finally:
        await http.close()


async def _run(
    ctx: ServiceContext,
    source: RouteSource,
    pauses: PauseBook,
    http: aiohttp.ClientSession,
    user_agent: str,
    paused_seconds: PausedSeconds | None,
) -> None:
    def make_sink(route: Route) -> Sink:
        return build_sink(
            SinkContext(route=route, nc=ctx.nc, js=ctx.js, user_agent=user_agent, http=http)
        )

    consumers = RouteConsumers(
        ctx.js,
        service="dispatcher",
        instance=ctx.settings.instance,
        source=source,
        owns=owns,
        durable=names.dispatcher_durable,
        make_sink=make_sink,
        pauses=pauses,
        paused_seconds=paused_seconds,
        rate_replicas=ctx.config.nats.replicas,
    )
    # the config file's routes: a sink that cannot be built is reported at start (exit 2)
    await consumers.start(await ctx.startup("routes", source.load))
    status_sub = await serve_status(ctx.nc, consumers.status)
    consumers.spawn_sweep()

    ctx.ready = True
    try:
        await consumers.follow(source, ctx.stopping)
    finally:
        with contextlib.suppress(Exception):
            await status_sub.unsubscribe()
        await consumers.close()


async def main(settings: ServiceSettings) -> int:
    """Run the dispatcher until SIGTERM; returns the exit status."""
    return await run_service(settings, _body, version=version(names.distribution("dispatcher")))
