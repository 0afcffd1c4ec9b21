"""The dispatcher: delivers each route's events from VEBUS_ROUTES to the route's sink.

Every route has its own durable pull consumer (`vebus-dispatch-<route>`, shared by all
replicas) and its own worker with its own `max_in_flight`, so a slow or failing sink holds
back only its own route. One aiohttp session (one keep-alive pool) serves every HTTP sink.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from importlib.metadata import version

import aiohttp
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vebus.config import Route
from vebus.consumer import PullWorker
from vebus.service import ServiceContext, ServiceSettings, run_service
from vebus.streams import ensure_consumer, ensure_streams
from vebus.subjects import ROUTES_STREAM, dispatcher_durable, route_subject
from vebus_dispatcher.delivery import RouteDelivery
from vebus_dispatcher.sinks import build_sink

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


async def _body(ctx: ServiceContext, *, session: aiohttp.ClientSession) -> None:
    await ensure_streams(ctx.js, ctx.config)
    workers: list[PullWorker] = []
    for route in ctx.config.routes:
        await ensure_consumer(ctx.js, ROUTES_STREAM, route_consumer_config(route))
        delivery = RouteDelivery(ctx.js, route, build_sink(route, session))
        workers.append(
            PullWorker(
                ctx.js,
                stream=ROUTES_STREAM,
                durable=dispatcher_durable(route.name),
                handler=delivery.handle,
                max_in_flight=route.delivery.max_in_flight,
            )
        )
    ctx.ready = True
    log.info(
        "dispatching %d route(s): %s", len(workers), ", ".join(r.name for r in ctx.config.routes)
    )
    if not workers:
        await ctx.stopping.wait()
        return
    async with asyncio.TaskGroup() as tg:
        for worker in workers:
            tg.create_task(worker.run(ctx.stopping))


async def main(settings: ServiceSettings) -> int:
    """Run the dispatcher until SIGTERM; returns the exit status."""
    ours = version("vebus-dispatcher")
    # no pool limit: each route's max_in_flight already bounds its connections
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),  # each attempt has the route's timeout
        headers={"User-Agent": f"vebus-dispatcher/{ours}"},
    ) as session:
        body = functools.partial(_body, session=session)
        return await run_service(settings, body, version=ours)
