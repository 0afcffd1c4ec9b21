"""The dispatcher: delivers each route's events from VEBUS_ROUTES to the route's sink.

Every route has its own durable pull consumer (`vebus-dispatch-<route>`, shared by all
replicas), its own worker with its own `max_in_flight`, and its own sink (for HTTP sinks,
its own keep-alive connection pool), so a slow or failing sink holds back only its own
route. A route with a `rate` shares one send schedule with every replica (ratelimit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib.metadata import version

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vebus.config import Route
from vebus.consumer import PullWorker
from vebus.errors import ConfigError
from vebus.service import ServiceContext, ServiceSettings, run_service
from vebus.streams import ensure_consumer, ensure_streams
from vebus.subjects import ROUTES_STREAM, dispatcher_durable, route_subject
from vebus_dispatcher.delivery import PausedSeconds, RouteDelivery, no_pause
from vebus_dispatcher.ratelimit import RateLimiter, rate_bucket
from vebus_dispatcher.sinks import SinkContext, build_sink

__all__ = ["ACK_MARGIN", "main", "route_consumer_config"]

log = logging.getLogger(__name__)

#: ack_wait beyond the per-attempt timeout: time to store a dead letter and send the ack
ACK_MARGIN = 10.0
#: JetStream stops redelivering this many deliveries past max_attempts (see DESIGN: poison)
MAX_DELIVER_EXTRA = 2


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


async def _body(ctx: ServiceContext, *, paused_seconds: PausedSeconds = no_pause) -> None:
    await ensure_streams(ctx.js, ctx.config)
    routes = ctx.config.routes
    kv = await rate_bucket(ctx.js, ctx.config) if any(r.delivery.rate for r in routes) else None
    user_agent = f"vebus-dispatcher/{version('vebus-dispatcher')}"
    workers: list[PullWorker] = []
    async with contextlib.AsyncExitStack() as sinks:
        for route in routes:
            await ensure_consumer(ctx.js, ROUTES_STREAM, route_consumer_config(route))
            try:
                sink = build_sink(
                    SinkContext(route=route, nc=ctx.nc, js=ctx.js, user_agent=user_agent)
                )
            except ConfigError as e:
                for line in e.errors:
                    log.error("%s", line)
                raise SystemExit(2) from None
            sinks.push_async_callback(sink.close)
            limiter = None
            if route.delivery.rate is not None and kv is not None:
                limiter = RateLimiter(kv, route.name, route.delivery.rate)
            delivery = RouteDelivery(
                ctx.js, route, sink, limiter=limiter, paused_seconds=paused_seconds
            )
            workers.append(
                PullWorker(
                    ctx.js,
                    stream=ROUTES_STREAM,
                    durable=dispatcher_durable(route.name),
                    handler=delivery.handle,
                    max_in_flight=route.delivery.max_in_flight,
                    # a slot that frees is refilled at once, not after a fetch round trip;
                    # a rate-limited route's events would only wait longer
                    prefetch=0 if limiter else route.delivery.max_in_flight,
                )
            )
        ctx.ready = True
        log.info("dispatching %d route(s): %s", len(workers), ", ".join(r.name for r in routes))
        if not workers:
            await ctx.stopping.wait()
            return
        async with asyncio.TaskGroup() as tg:
            for worker in workers:
                tg.create_task(worker.run(ctx.stopping))


async def main(settings: ServiceSettings) -> int:
    """Run the dispatcher until SIGTERM; returns the exit status."""
    return await run_service(settings, _body, version=version("vebus-dispatcher"))
