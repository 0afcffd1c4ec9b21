"""The functions service: runs the operator's functions on the events of the routes that
name them (`sink: {kind: function, function: NAME}`).

It is a delivering service like the dispatcher and shares its machinery: the route source
(vebus.routing.source: the stored route set, else the config file's; live), one durable
consumer per route (`vebus-fn-<route>`, shared by every replica) with its own worker and
`max_in_flight` (vebus.delivery.consumers), and the per-message decision (vebus.delivery.
route: attempts by delivery count, backoff, max_age, rate, pause, dead letters, POISON).
What is its own: the functions (vebus_functions.host), declared in the `functions:` section
of its config file and run in processes of their own (never in this event loop), and the
sink that turns an invocation's outcome into the delivery's (vebus_functions.sink).

Every replica answers `vebus routes apply` with the revision it runs and the functions it
declares (a route that names none of them is refused), and `vebus fn logs` with the recent
output of a function.
"""

from __future__ import annotations

import contextlib
import logging
import os
from importlib.metadata import version
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.msg import Msg

from vebus import names
from vebus.bus.streams import ensure_streams
from vebus.config import FunctionSink as FunctionSinkConfig
from vebus.config import Route
from vebus.delivery.consumers import RouteConsumers
from vebus.delivery.sink import Sink
from vebus.errors import ConfigError
from vebus.routing.source import ReplicaStatus, RouteSource, serve_status
from vebus.routing.store import PauseBook, open_route_store
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_functions.host import FunctionHost
from vebus_functions.output import Publisher
from vebus_functions.sink import FunctionSink
from vebus_functions.stats import FunctionMetrics

__all__ = ["LogsAnswer", "LogsRequest", "config_folder", "main", "owns"]

log = logging.getLogger(__name__)


def owns(sink_kind: str) -> bool:
    """Whether a route with this sink kind is the functions service's."""
    return sink_kind == names.FUNCTION_SINK


class LogsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`vebus fn logs`: the recent output of `function` (its last `lines` lines)."""

    function: str
    lines: int = 100


class LogsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One replica's recent lines of a function: [[epoch seconds, pid, text], ...]."""

    instance: str
    function: str
    lines: list[tuple[float, int, str]]
    dropped: int = 0


def config_folder(settings: ServiceSettings) -> Path:
    """Where the config file is: a function's `workdir` and code paths start there."""
    return Path(os.path.abspath(settings.config_path)).parent


async def _body(ctx: ServiceContext) -> None:
    await ctx.startup("streams", lambda: ensure_streams(ctx.js, ctx.config.stream_settings()))
    store = await ctx.startup(
        "route store", lambda: open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    )
    nc = ctx.nc

    def publisher(function: str) -> Publisher:
        subject = names.function_logs_subject(function)

        async def send(data: bytes) -> None:
            if nc.is_connected:
                await nc.publish(subject, data)

        return send

    host = FunctionHost(ctx.config, base_dir=config_folder(ctx.settings), publisher=publisher)
    await host.start()
    tel = ctx.telemetry
    if tel is not None:
        tel.metrics.registry.register(FunctionMetrics(
            {n: f.stats for n, f in host.functions.items()}, host.state_of, host.dropped_of,
        ))  # fmt: skip
    ctx.health_details["functions"] = host.details

    source = RouteSource(store, ctx.config, service="functions", delivers=owns)
    pauses = PauseBook(await ctx.startup("paused routes", store.pauses))

    def make_sink(route: Route) -> Sink:
        assert isinstance(route.sink, FunctionSinkConfig)
        function = host.get(route.sink.function)
        if function is None:
            raise ConfigError(
                [f"route {route.name}: no function named {route.sink.function!r} in this "
                 f"functions service's config (functions: {', '.join(host.names()) or 'none'})"]
            )  # fmt: skip
        sink: Sink = FunctionSink(route, function, ctx.js, ctx.config)
        if tel is None:
            return sink
        from vebus.runtime.observed import ObservedSink

        return ObservedSink(sink, route.name, tel)

    consumers = RouteConsumers(
        ctx.js,
        service="functions",
        instance=ctx.settings.instance,
        source=source,
        owns=owns,
        durable=names.functions_durable,
        make_sink=make_sink,
        pauses=pauses,
        rate_replicas=ctx.config.nats.replicas,
    )
    view = await ctx.startup("routes", source.load)
    try:
        # the config file's routes: a route naming a function this file does not declare
        # is reported at start (exit 2)
        await consumers.start(view)
    except ConfigError:
        await host.close()
        raise

    def status() -> ReplicaStatus:
        return msgspec.structs.replace(consumers.status(), functions=host.names())

    status_sub = await serve_status(ctx.nc, status)

    async def recent(msg: Msg) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=LogsRequest)
        except msgspec.DecodeError:
            return
        function = host.get(request.function)
        if function is None or not msg.reply:
            return
        lines = [(line.at, line.pid, line.text) for line in function.output.recent(request.lines)]
        answer = LogsAnswer(instance=ctx.settings.instance, function=function.name,
                            lines=lines, dropped=function.output.dropped)  # fmt: skip
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(msgspec.json.encode(answer))

    logs_sub = await ctx.nc.subscribe(names.FUNCTION_LOGS_SUBJECT, cb=recent)
    consumers.spawn_sweep()

    ctx.ready = True
    try:
        await consumers.follow(source, ctx.stopping)
    finally:
        for sub in (status_sub, logs_sub):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await consumers.close()
        await host.close()


async def main(settings: ServiceSettings) -> int:
    """Run the functions service until SIGTERM; returns the exit status."""
    return await run_service(settings, _body, version=version(names.distribution("functions")))
