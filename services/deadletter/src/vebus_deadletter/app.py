"""The deadletter service: POISON dead letters, the HTTP API, replay jobs, the alert.

JetStream publishes a MAX_DELIVERIES advisory when a consumer gives up on a message, but a
work-queue stream keeps that message: nobody acked it. Each advisory (shared by the
replicas through a queue group) is turned into a POISON dead letter of the message's route,
stored and acknowledged by VEBUS_DLQ, and only then is the message deleted from
VEBUS_ROUTES. The dead letter's Msg-Id derives from the message's own, so two replicas (or
the advisory and a sweep) that record the same message make one record.

A sweep, at start and then every SWEEP_INTERVAL, finds what no advisory reported (no replica
listened, an advisory was lost, storing failed): for each dispatcher consumer, a message
still in the stream that the consumer has moved past is one it gave up on. "Moved past"
is read from the consumer's state: at or below its ack floor, or at or below its last
delivered sequence while nothing is pending. A message past MaxDeliver above the ack
floor, while other messages are pending, is left for a later sweep.

Besides, each replica serves the HTTP API (`api.py`, on `deadletter.api.listen`), runs the
replay jobs asked for over it and takes over those whose replica died (`jobs.py`), and,
when `deadletter.alert` is configured, tells the alert route when a route's dead letters
pass the threshold (`alert.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from importlib.metadata import version

import msgspec
import nats.errors
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from vebus import aio, names
from vebus.bus.dlq import publish_dead_letter
from vebus.bus.streams import ensure_streams
from vebus.errors import ErrorCode, Exhausted, VebusError
from vebus.names import MSG_ID
from vebus.routing.source import RouteSource
from vebus.routing.store import open_route_store
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_deadletter.alert import DeadLetterAlert
from vebus_deadletter.api import ApiServer, build_app
from vebus_deadletter.jobs import JobRunner
from vebus_deadletter.state import StateStore

__all__ = ["ADVISORY_SUBJECT", "Deadletter", "MaxDeliveriesAdvisory", "main"]

log = logging.getLogger(__name__)

ADVISORY_SUBJECT = f"{names.MAX_DELIVERIES_ADVISORY}.{names.ROUTES_STREAM}.*"
#: advisories being handled at once, per replica
MAX_IN_FLIGHT = 32
#: how often the sweep runs after the one at start
SWEEP_INTERVAL = 300.0
#: a message the sweep found is recorded only if it is still there after this long (an ack
#: that has just moved the consumer past it may not have removed it from the stream yet)
SWEEP_GRACE = 2.0


class MaxDeliveriesAdvisory(msgspec.Struct, frozen=True, kw_only=True):
    """io.nats.jetstream.advisory.v1.max_deliver: a consumer gave up on a message."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    timestamp: str | None = None


_advisory = msgspec.json.Decoder(MaxDeliveriesAdvisory)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


class Deadletter:
    """Records messages JetStream gave up on as POISON dead letters, then removes them."""

    def __init__(self, js: JetStreamContext, routes: RouteSource) -> None:
        self._js = js
        #: the running route set: a POISON dead letter names its route's sink kind
        self._routes = routes
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        #: messages stored as dead letters by this replica
        self.recorded = 0

    async def _sink(self, route: str) -> str:
        """The sink kind of `route` in the running set; "unknown" for a route not in it."""
        try:
            return (await self._routes.kinds()).get(route) or "unknown"
        except (VebusError, nats.errors.Error, TimeoutError) as e:
            log.warning("could not read the route set (%r): the sink kind is unknown", e)
            return "unknown"

    async def record(
        self,
        seq: int,
        *,
        consumer: str,
        deliveries: int,
        when: dt.datetime | None = None,
    ) -> bool:
        """Store VEBUS_ROUTES message `seq` as a POISON dead letter, then delete it.

        Returns False when the message is already gone (another replica recorded it).
        Raises PublishError when VEBUS_DLQ did not acknowledge: the message stays where it
        is for the next sweep.
        """
        try:
            raw = await self._js.get_msg(names.ROUTES_STREAM, seq=seq)
        except NotFoundError:
            log.debug("%s message %d is already gone", names.ROUTES_STREAM, seq)
            return False
        subject = raw.subject or ""
        route = subject.rsplit(".", 1)[-1]
        headers = dict(raw.headers or {})
        # without a Msg-Id of its own, the stream sequence still makes replicas agree
        headers.setdefault(MSG_ID, f"{names.ROUTES_STREAM}:{seq}")
        await publish_dead_letter(
            self._js,
            route=route,
            sink=await self._sink(route),
            code=ErrorCode.POISON,
            # JetStream does not record the first delivery: the time the message entered
            # the route is when attempts could start (the dispatcher records the same)
            first_attempt=raw.time,
            error=(
                f"consumer {consumer} delivered it {deliveries} time(s) (its MaxDeliver) "
                "and never got an ack, nak or term: the dispatcher crashed or hung on it"
            ),
            headers=headers,
            body=raw.data or b"",
            attempts=deliveries,
            exhausted=Exhausted.MAX_DELIVERIES,
            last_attempt=when,
        )
        await self._delete(seq)
        self.recorded += 1
        log.warning(
            "%s message %d (%s, Msg-Id %s) reached MaxDeliver on %s: stored as a POISON "
            "dead letter",
            names.ROUTES_STREAM,
            seq,
            subject,
            headers[MSG_ID],
            consumer,
        )
        return True

    async def _delete(self, seq: int) -> None:
        try:
            await self._js.delete_msg(names.ROUTES_STREAM, seq)
        except APIError as e:
            if not isinstance(e, NotFoundError) and e.err_code != names.JS_ERR_MSG_DELETE_FAILED:
                raise
            log.debug("%s message %d was deleted by someone else", names.ROUTES_STREAM, seq)

    # ------------------------------------------------------------------ advisories

    async def on_advisory(self, msg: Msg) -> None:
        """Subscription callback: start handling one advisory (at most MAX_IN_FLIGHT)."""
        try:
            adv = _advisory.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("ignoring a malformed advisory on %s: %s", msg.subject, e)
            return
        if adv.stream != names.ROUTES_STREAM:
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(adv))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, adv: MaxDeliveriesAdvisory) -> None:
        try:
            await self.record(
                adv.stream_seq,
                consumer=adv.consumer,
                deliveries=adv.deliveries,
                when=_parse_time(adv.timestamp),
            )
        except (VebusError, nats.errors.Error, TimeoutError) as e:
            log.error(
                "could not record VEBUS_ROUTES message %d (%s): %r; it stays in the stream "
                "and the next sweep tries again",
                adv.stream_seq,
                adv.consumer,
                e,
            )
        except Exception:
            log.exception("advisory for VEBUS_ROUTES message %d failed", adv.stream_seq)

    async def finish(self) -> None:
        """Wait for the advisories being handled."""
        if self._tasks:
            log.info("finishing %d advisory(ies) in flight", len(self._tasks))
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ sweep

    async def sweep(self, stopping: asyncio.Event) -> int:
        """Record every message a dispatcher consumer has given up on; returns how many."""
        found: list[tuple[int, ConsumerInfo]] = []
        for info in await self._js.consumers_info(names.ROUTES_STREAM):
            if names.route_of_durable(info.name or "") is not None:
                found += [(seq, info) for seq in await self._given_up(info)]
        if not found:
            return 0
        log.info(
            "sweep: %d message(s) past MaxDeliver; checking again in %.0fs", len(found), SWEEP_GRACE
        )
        await aio.sleep(SWEEP_GRACE, stopping)
        done = 0
        for seq, info in found:
            if stopping.is_set():
                break
            max_deliver = info.config.max_deliver or 0
            if await self.record(seq, consumer=info.name or "?", deliveries=max(max_deliver, 0)):
                done += 1
        return done

    async def _given_up(self, info: ConsumerInfo) -> list[int]:
        """Sequences still in the stream that `info`'s consumer has moved past for good."""
        cfg = info.config
        if not cfg.filter_subject or cfg.deliver_policy not in (None, DeliverPolicy.ALL):
            # a consumer that started later than the stream's first message has moved past
            # messages it never delivered: they are not its poison
            return []
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        upto = delivered if not info.num_ack_pending else floor
        out: list[int] = []
        seq = 1
        while seq <= upto:
            try:
                raw = await self._js.get_msg(
                    names.ROUTES_STREAM, seq=seq, subject=cfg.filter_subject, next=True
                )
            except NotFoundError:
                break
            if raw.seq is None or raw.seq > upto:
                break
            out.append(raw.seq)
            seq = raw.seq + 1
        return out

    async def sweep_forever(self, stopping: asyncio.Event) -> None:
        """Sweep now and every SWEEP_INTERVAL until `stopping` is set."""
        async for _ in aio.every(SWEEP_INTERVAL, stopping):
            try:
                n = await self.sweep(stopping)
                if n:
                    log.warning("sweep: stored %d message(s) past MaxDeliver as dead letters", n)
            except (VebusError, nats.errors.Error, TimeoutError) as e:
                log.error("sweep failed: %r; trying again in %.0fs", e, SWEEP_INTERVAL)


async def _stream_depths(ctx: ServiceContext) -> None:
    """Refresh the stream depth gauges (one service reports them: this one)."""
    assert ctx.telemetry is not None
    m = ctx.telemetry.metrics
    for stream in (names.EVENTS_STREAM, names.ROUTES_STREAM, names.DLQ_STREAM):
        state = (await ctx.js.stream_info(stream)).state
        m.stream_messages.labels(stream).set(state.messages)
        m.stream_bytes.labels(stream).set(state.bytes)


async def _start_api(ctx: ServiceContext, app: web.Application) -> web.AppRunner | None:
    """Listen on deadletter.api.listen; None (logged) when it is off or cannot listen."""
    listen = ctx.config.deadletter.api.listen
    if not listen:
        log.info("HTTP API off (deadletter.api.listen is empty)")
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError as e:
        # recording poison messages matters more than the API: go on without it
        log.error("HTTP API cannot listen on %s: %s; running without it", listen, e)
        await runner.cleanup()
        return None
    if not ctx.config.deadletter.api.token:
        log.warning("HTTP API: no deadletter.api.token, so replay and purge are refused")
    log.info("HTTP API on http://%s/ (OpenAPI document at /openapi.json)", listen)
    return runner


async def _body(ctx: ServiceContext, *, version: str) -> None:
    await ctx.startup("streams", lambda: ensure_streams(ctx.js, ctx.config.stream_settings()))
    store = await ctx.startup(
        "state bucket", lambda: StateStore.open(ctx.js, replicas=ctx.config.nats.replicas)
    )
    route_store = await ctx.startup(
        "route store", lambda: open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    )
    routes = RouteSource(route_store, ctx.config, service="deadletter")
    ctx.add_poll(functools.partial(_stream_depths, ctx))
    service = Deadletter(ctx.js, routes)
    jobs = JobRunner(
        ctx.js, store, instance=f"deadletter-{ctx.settings.instance}", stopping=ctx.stopping
    )
    api = ApiServer(ctx.js, ctx.config, jobs, routes=routes, version=version)
    runner = await _start_api(ctx, build_app(api))
    sub = await ctx.nc.subscribe(
        ADVISORY_SUBJECT, queue=names.DEADLETTER_QUEUE, cb=service.on_advisory
    )
    await ctx.nc.flush()
    ctx.ready = True
    log.info("listening for MAX_DELIVERIES advisories on %s", ADVISORY_SUBJECT)
    alert = ctx.config.deadletter.alert
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(service.sweep_forever(ctx.stopping))
            tg.create_task(jobs.take_over_forever())
            if alert is not None:
                if alert.route not in await routes.names():
                    log.warning(
                        "deadletter.alert.route: no route %r in the running route set; "
                        "alerts go to %s all the same",
                        alert.route,
                        names.route_subject(alert.route),
                    )
                tg.create_task(DeadLetterAlert(ctx.js, store, alert).run(ctx.stopping))
    finally:
        if runner is not None:
            await runner.cleanup()  # no new replays from here on
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        await jobs.finish()
        await service.finish()


async def main(settings: ServiceSettings) -> int:
    """Run the deadletter service until SIGTERM; returns the exit status."""
    ours = version(names.distribution("deadletter"))
    return await run_service(settings, functools.partial(_body, version=ours), version=ours)
