"""The filter: reads VEBUS_EVENTS, publishes one copy per matching route to VEBUS_ROUTES.

An event is acknowledged only after every copy is stored. An event that is not a valid
CloudEvent becomes a dead letter on `vebus.dlq._invalid`; a copy refused because its
route is full becomes a ROUTE_FULL dead letter of that route; the other routes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.bus.consume import Ack, Disposition, Nak, PullWorker
from vebus.bus.dlq import publish_dead_letter
from vebus.bus.publish import publish
from vebus.bus.streams import ensure_consumer, ensure_streams
from vebus.errors import (
    ErrorCode,
    Exhausted,
    InvalidEventError,
    MessageTooLargeError,
    PublishError,
    RouteFullError,
)
from vebus.names import MSG_ID
from vebus.routing.router import Router
from vebus.routing.source import ReplicaStatus, RouteSource, RouteView, serve_status
from vebus.routing.store import open_route_store
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service

__all__ = ["Filter", "main"]

log = logging.getLogger(__name__)

#: events being matched and published at once, per replica
MAX_IN_FLIGHT = 256
#: how long an unacknowledged event waits before JetStream offers it again
ACK_WAIT = 30.0
#: delay before an event whose copies could not all be stored is tried again
RETRY_DELAY = 2.0


class Filter:
    """The message handler: match, fan out, acknowledge."""

    def __init__(self, js: JetStreamContext, router: Router) -> None:
        self._js = js
        self._router = router

    @property
    def router(self) -> Router:
        return self._router

    def swap(self, router: Router) -> None:
        """Match every message that starts from now on against `router`."""
        self._router = router

    async def handle(self, msg: Msg) -> Disposition:
        router = self._router  # one route set for the whole message, even across a swap
        headers = msg.headers or {}
        try:
            event = from_headers(headers, msg.data)
            doc = event.as_match_input()
        except InvalidEventError as e:
            log.warning("invalid event on %s: %s", msg.subject, e)
            await publish_dead_letter(
                self._js,
                route=names.DLQ_INVALID_ROUTE,
                sink="-",
                code=ErrorCode.INVALID_EVENT,
                error=f"{msg.subject}: {e}",
                headers=headers,
                body=msg.data,
                attempts=0,  # no delivery was attempted (docs/deadletters.md)
                exhausted=Exhausted.NOT_RETRYABLE,
            )
            return Ack()
        routes = router.match(doc)
        if not routes:
            return Ack()  # filtered out: nothing to store
        base_id = headers.get(MSG_ID) or f"{names.EVENTS_STREAM}:{msg.metadata.sequence.stream}"
        copies = (
            publish(
                self._js,
                router.subjects[r.name],
                msg.data,
                {**headers, MSG_ID: f"{base_id}:{r.name}"},
            )
            for r in routes
        )
        results: list[object]
        if len(routes) == 1:  # the common case: no task for a single copy
            try:
                results = [await next(copies)]
            except Exception as e:
                results = [e]
        else:
            results = await asyncio.gather(*copies, return_exceptions=True)
        retry = False
        for route, result in zip(routes, results, strict=True):
            if isinstance(result, RouteFullError | MessageTooLargeError):
                if isinstance(result, RouteFullError):
                    code, error = ErrorCode.ROUTE_FULL, str(result)
                else:
                    code = ErrorCode.TOO_LARGE
                    error = (
                        f"{result}; the event stays in {names.EVENTS_STREAM} at sequence "
                        f"{msg.metadata.sequence.stream} while retention keeps it"
                    )
                log.warning(
                    "event %s to route %s dead-lettered as %s: %s",
                    event.id,
                    route.name,
                    code,
                    error,
                    extra={"route": route.name, "event_id": event.id},
                )
                await publish_dead_letter(
                    self._js,
                    route=route.name,
                    sink=route.sink_kind,
                    code=code,
                    error=error,
                    headers={**headers, MSG_ID: f"{base_id}:{route.name}"},
                    body=msg.data,
                    attempts=0,
                    exhausted=Exhausted.NOT_RETRYABLE,
                )
            elif isinstance(result, PublishError):
                log.warning("event %s to route %s not stored: %s", event.id, route.name, result)
                retry = True
            elif isinstance(result, BaseException):
                raise result
        # copies already stored are deduplicated by their Msg-Id when the event comes back
        return Nak(RETRY_DELAY) if retry else Ack()


async def _body(ctx: ServiceContext) -> None:
    await ctx.startup("streams", lambda: ensure_streams(ctx.js, ctx.config.stream_settings()))
    await ctx.startup(
        "consumer",
        lambda: ensure_consumer(
            ctx.js,
            names.EVENTS_STREAM,
            ConsumerConfig(
                durable_name=names.FILTER_DURABLE,
                filter_subject=names.EVENTS_SUBJECTS,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_ack_pending=MAX_IN_FLIGHT * 8,
            ),
        ),
    )
    store = await ctx.startup(
        "route store", lambda: open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    )
    source = RouteSource(store, ctx.config, service="filter")
    view = await ctx.startup("routes", source.load)
    handler = Filter(ctx.js, Router(view.routes.values()))
    worker = PullWorker(
        ctx.js,
        stream=names.EVENTS_STREAM,
        durable=names.FILTER_DURABLE,
        handler=handler.handle,
        max_in_flight=MAX_IN_FLIGHT,
        batch=128,
    )

    def status() -> ReplicaStatus:
        return ReplicaStatus(
            service="filter",
            instance=ctx.settings.instance,
            revision=source.view.revision,
            routes=[r.name for r in handler.router.routes],
            errors=list(source.view.errors),
        )

    async def on_routes(new: RouteView) -> None:
        if new.errors:
            return  # not loaded: the running routes stay (the errors are in the status)
        handler.swap(Router(new.routes.values()))
        log.info("routes revision %d: filtering with %d route(s)", new.revision, len(new.routes))

    status_sub = await serve_status(ctx.nc, status)
    ctx.ready = True
    log.info("filtering with %d route(s) (revision %d)", len(view.routes), view.revision)
    try:
        async with source.follow(ctx.stopping, on_routes=on_routes):
            await worker.run(ctx.stopping)
    finally:
        with contextlib.suppress(Exception):
            await status_sub.unsubscribe()


async def main(settings: ServiceSettings) -> int:
    """Run the filter until SIGTERM."""
    return await run_service(settings, _body)
