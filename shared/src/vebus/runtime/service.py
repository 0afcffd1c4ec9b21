"""Running a vebus service: settings, NATS connection, health endpoints, graceful shutdown.

`run_service` connects to NATS (retrying until it can or until told to stop), serves
`/healthz` (the process is alive) and `/readyz` (connected, and the service said it is
ready), registers the process as a NATS micro service so `$SRV.PING` finds every replica,
runs the service body, and on SIGTERM or SIGINT sets `ctx.stopping`: the body stops
fetching and finishes what it has in flight, then the connection is drained and the
process exits 0.

The runner knows no service by name: each body registers what is its own on the context:
its /readyz fields (`health_details`), its metric collectors (`ctx.telemetry`), the gauges
it refreshes with a NATS round trip (`add_poll`). Its start-up calls to JetStream go
through `ctx.startup`, which waits out a cluster that is still electing its leaders.

Observability lives here too: the service's `vebus.runtime.telemetry.Telemetry` (tracing
from the OTEL_* variables, Prometheus metrics served at `/metrics` on the health port, a
background poll of consumer backlogs), logs as text or JSON (`--log-format`,
VEBUS_LOG_FORMAT) with the handled message's event id, route, sink and trace id, and a
micro-service `status` endpoint whose `$SRV.STATS` data is this replica's status (for
`vebus status`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from vebus import aio, names
from vebus.config import Config, load_config
from vebus.errors import ConfigError, NatsAuthError, NatsTlsError
from vebus.runtime.connect import connect_service
from vebus.runtime.telemetry import LogContextFilter, Telemetry

__all__ = [
    "LOG_FORMATS",
    "ServiceContext",
    "ServiceSettings",
    "parse_settings",
    "run_service",
    "setup_logging",
]

log = logging.getLogger(__name__)

#: seconds after SIGTERM before a stop that is still going dumps its threads' stacks
STOP_DIAGNOSE = 10.0


def _dump_tasks() -> None:
    """Print the stack of every pending asyncio task to stderr (a stop that hangs)."""
    tasks = asyncio.all_tasks()
    print(f"stop still waiting after {STOP_DIAGNOSE:g}s; {len(tasks)} task(s):", file=sys.stderr)
    for task in tasks:
        task.print_stack(file=sys.stderr)


LOG_FORMATS = ("text", "json")
#: seconds between two polls of consumer backlogs and stream depths (env VEBUS_METRICS_POLL)
POLL_INTERVAL = 15.0
#: the micro-service endpoint every replica answers with its status (`vebus status`)
STATUS_ENDPOINT = "status"
#: the longest wait between two tries of a start-up call (a cluster electing leaders)
STARTUP_MAX_DELAY = 5.0
#: JetStream's "no suitable peers for placement": a cluster whose nodes are still meeting
JS_ERR_NO_PEERS = 10005

T = TypeVar("T")
#: a gauge refresh that needs a NATS round trip, run every POLL_INTERVAL
Poll = Callable[[], Awaitable[None]]


def startup_retryable(e: BaseException) -> bool:
    """Whether a JetStream API call at start failed because the server or cluster is not
    ready yet (no leader, no responders, no peers, a timeout), not because it was refused."""
    if isinstance(e, NatsAuthError | NatsTlsError):
        return False
    if isinstance(e, TimeoutError | nats.errors.TimeoutError | nats.errors.NoRespondersError):
        return True
    if isinstance(e, APIError):
        return (e.code or 0) >= 500 or e.err_code == JS_ERR_NO_PEERS
    return isinstance(e, nats.errors.ConnectionClosedError | nats.errors.StaleConnectionError)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What a service process is started with (command line, or VEBUS_* variables)."""

    service: str
    config_path: str
    health_host: str = "127.0.0.1"
    health_port: int = 0
    log_level: str = "INFO"
    log_format: str = "text"
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass(kw_only=True)
class ServiceContext:
    """What the service body gets: connection, JetStream, config, and the stop signal."""

    settings: ServiceSettings
    config: Config
    nc: Client
    js: JetStreamContext
    stopping: asyncio.Event
    ready: bool = False
    health_port: int = 0
    #: extra /readyz fields: a value, or a callable giving it at request time
    health_details: dict[str, Any] = field(default_factory=dict)
    #: tracing and metrics of this service (what the shared wrappers report to)
    telemetry: Telemetry | None = None
    #: the body's own gauge refreshes (`add_poll`)
    polls: list[Poll] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """The /readyz extra fields as they are now (with `jetstream`: the streams whose
        publishes keep failing, when there are)."""
        out = {k: v() if callable(v) else v for k, v in self.health_details.items()}
        if self.telemetry is not None and self.telemetry.publish_health.failing:
            out["jetstream"] = self.telemetry.publish_health.report()
        return out

    def not_ready_reason(self) -> str | None:
        """Why this replica is not ready (None: it is): starting, stopping, NATS
        disconnected, or JetStream refusing its writes (no storage left, no acks)."""
        if self.stopping.is_set():
            return "stopping"
        if not self.nc.is_connected:
            return "NATS: not connected (reconnecting)"
        if self.telemetry is not None and (why := self.telemetry.publish_health.reason()):
            return why  # before "starting": a service that cannot store is not ready for it
        if not self.ready:
            return "starting"
        return None

    def add_poll(self, poll: Poll) -> None:
        """Run `poll` every POLL_INTERVAL with the backlog poll (its errors are counted)."""
        self.polls.append(poll)

    async def startup(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()`, tried again with backoff while JetStream is not ready yet (a
        cluster electing its leaders, a node still starting): a service started before its
        cluster waits for it instead of crashing. Other errors are raised at once; a stop
        while waiting raises CancelledError."""

        async def log_retry(state: RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: JetStream not ready (%r); trying again in %.1fs", what, e, wait)

        async def sleep(seconds: float) -> None:
            if await aio.sleep(seconds, self.stopping):
                raise asyncio.CancelledError  # stopped while waiting: the body ends

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(startup_retryable),
            wait=wait_exponential_jitter(initial=0.5, max=STARTUP_MAX_DELAY),
            before_sleep=log_retry,
            sleep=sleep,
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")


def parse_settings(service: str, argv: Sequence[str] | None = None) -> ServiceSettings:
    """Settings from the command line, falling back to VEBUS_CONFIG and friends."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog=f"python -m {names.service_module(service)}",
        description=f"The vebus {service} service.",
    )
    p.add_argument(
        "--config",
        default=env.get(names.ENV_CONFIG, "vebus.yaml"),
        help=f"the vebus.yaml to load (env {names.ENV_CONFIG}; default ./vebus.yaml)",
    )
    p.add_argument(
        "--health-host",
        default=env.get(names.ENV_HEALTH_HOST, "127.0.0.1"),
        help=f"address of /healthz and /readyz (env {names.ENV_HEALTH_HOST}; default 127.0.0.1)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(env.get(names.ENV_HEALTH_PORT, names.HEALTH_PORTS.get(service, 0))),
        help=f"port of /healthz and /readyz, 0 for any free port (env {names.ENV_HEALTH_PORT})",
    )
    p.add_argument(
        "--log-level",
        default=env.get(names.ENV_LOG_LEVEL, "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help=f"(env {names.ENV_LOG_LEVEL}; default INFO)",
    )
    p.add_argument(
        "--log-format",
        default=env.get(names.ENV_LOG_FORMAT, "text"),
        choices=LOG_FORMATS,
        help="text, or json: one JSON object a line with event_id, route, sink and trace_id "
        f"when there is one (env {names.ENV_LOG_FORMAT}; default text)",
    )
    a = p.parse_args(argv)
    return ServiceSettings(
        service=service,
        config_path=a.config,
        health_host=a.health_host,
        health_port=a.health_port,
        log_level=a.log_level,
        log_format=a.log_format,
    )


def setup_logging(
    service: str, instance: str, *, level: str = "INFO", log_format: str = "text"
) -> None:
    """Log to stderr as text, or as JSON lines (python-json-logger) for log collectors.

    Every record passes `LogContextFilter`: in JSON its fields (service, instance, and while
    a message is handled event_id, route, sink, consumer, trace_id) are keys of the line.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s {service}[{instance}] %(name)s: %(message)s"
            )
        )
    handler.addFilter(LogContextFilter(service, instance))
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that configured logging keeps it
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _start_health(ctx: ServiceContext) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": ctx.settings.service})

    async def readyz(_: web.Request) -> web.Response:
        reason = ctx.not_ready_reason()
        body: dict[str, Any] = {
            "ready": reason is None,
            "nats": ctx.nc.is_connected,
            "service": ctx.settings.service,
        }
        if reason is not None:
            body["reason"] = reason
        body.update(ctx.details())
        return web.json_response(body, status=200 if reason is None else 503)

    async def metrics(_: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        assert ctx.telemetry is not None
        body = generate_latest(ctx.telemetry.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if ctx.telemetry is not None:
        app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctx.settings.health_host, ctx.settings.health_port)
    await site.start()
    addresses = runner.addresses  # the bound (host, port, ...): port 0 picks a free one
    ctx.health_port = int(addresses[0][1]) if addresses else ctx.settings.health_port
    return runner


Body = Callable[[ServiceContext], Awaitable[None]]


async def _poll(ctx: ServiceContext, interval: float) -> None:
    """Refresh the gauges that need a NATS round trip: the backlog of each consumer this
    replica runs, and what the body added (`ctx.add_poll`)."""
    tel = ctx.telemetry
    assert tel is not None
    m = tel.metrics
    async for _ in aio.every(interval, ctx.stopping):
        for stream, durable in sorted(tel.consumers):
            try:
                info = await ctx.js.consumer_info(stream, durable)
            except NotFoundError:
                # missing for now (deleted with its route, or lost and being created again
                # by its worker): no backlog to report; polled again while a worker runs
                tel.drop_backlog(stream, durable)
                continue
            except (TimeoutError, nats.errors.Error) as e:
                m.poll_errors.labels().inc()
                log.debug("metrics poll of %s failed: %r", durable, e)
                continue
            m.pending.labels(stream, durable).set(info.num_pending or 0)
            m.ack_pending.labels(stream, durable).set(info.num_ack_pending or 0)
            m.redelivered.labels(stream, durable).set(info.num_redelivered or 0)
        for poll in ctx.polls:
            try:
                await poll()
            except (TimeoutError, nats.errors.Error) as e:
                m.poll_errors.labels().inc()
                log.debug("metrics poll failed: %r", e)


def _status(ctx: ServiceContext, version: str, started: float) -> dict[str, Any]:
    """This replica as `vebus status` shows it (the data of its micro-service stats)."""
    out: dict[str, Any] = {
        "service": ctx.settings.service,
        "instance": ctx.settings.instance,
        "version": version,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "health_port": ctx.health_port,
        "ready": (reason := ctx.not_ready_reason()) is None,
        "uptime": round(time.time() - started, 1),
        "details": ctx.details(),
    }
    if reason is not None:
        out["reason"] = reason
    if (tel := ctx.telemetry) is not None:
        m = tel.metrics
        out["counters"] = {
            "received": m.total(m.received),
            "published": m.total(m.published),
            "delivered": m.total(m.delivered),
            "failed": m.total(m.dead_lettered),
        }
        # per route: what the console's routes page shows (delivered and failed counts)
        routes: dict[str, dict[str, float]] = {}
        for counter, key in ((m.delivered, "delivered"), (m.dead_lettered, "failed")):
            for labels, value in counter.items():
                if route := labels.get("route"):
                    entry = routes.setdefault(route, {"delivered": 0.0, "failed": 0.0})
                    entry[key] += value
        if routes:
            out["routes"] = routes
        out["tracing"] = tel.tracer is not None
    return out


async def _register(ctx: ServiceContext, version: str) -> None:
    """Register this replica as the micro service `vebus-<service>`.

    `$SRV.PING`/`$SRV.INFO` find it (metadata: instance, host, health port); its `status`
    endpoint answers with `_status`, and `$SRV.STATS` carries the same as the endpoint's
    data, so one scatter-gather request reads every replica.
    """
    from nats import micro
    from nats.micro.request import Request
    from nats.micro.service import EndpointConfig, EndpointStats, ServiceConfig

    started = time.time()
    settings = ctx.settings

    async def status(req: Request) -> None:
        await req.respond(json.dumps(_status(ctx, version, started), default=str).encode())

    def stats(_: EndpointStats) -> Any:
        return _status(ctx, version, started)

    service = await micro.add_service(
        ctx.nc,
        ServiceConfig(
            name=names.micro_service(settings.service),
            version=version,
            description=f"vebus {settings.service}",
            metadata={
                "instance": settings.instance,
                "health_port": str(ctx.health_port),
                "host": socket.gethostname(),
            },
            stats_handler=stats,
        ),
    )
    await service.add_endpoint(
        EndpointConfig(
            name=STATUS_ENDPOINT,
            subject=names.status_subject(settings.service, settings.instance),
            handler=status,
        )
    )


async def run_service(settings: ServiceSettings, body: Body, *, version: str = "0.1.0") -> int:
    """Run `body` as the service described by `settings`; returns the exit status."""
    setup_logging(
        settings.service,
        settings.instance,
        level=settings.log_level,
        log_format=settings.log_format,
    )
    try:
        config = load_config(settings.config_path, service=settings.service)
    except ConfigError as e:
        for line in e.errors:
            print(f"vebus {settings.service}: {line}", file=sys.stderr)
        return 2
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if stopping.is_set():
            return
        stopping.set()
        # a stop that has not ended within STOP_DIAGNOSE seconds prints every thread's
        # and every asyncio task's stack to stderr (the service log): what holds it up is
        # then on record before a supervisor's SIGKILL
        faulthandler.dump_traceback_later(STOP_DIAGNOSE, exit=False)
        loop.call_later(STOP_DIAGNOSE, _dump_tasks)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    try:
        nc = await connect_service(
            config.nats, f"{names.micro_service(settings.service)}-{settings.instance}", stopping
        )
    except (NatsAuthError, NatsTlsError, ConfigError) as e:
        # credentials or certificates NATS refuses, or files that cannot be read
        log.error("%s", e)
        print(f"vebus {settings.service}: {e}", file=sys.stderr)
        return 2
    if nc is None:
        return 0
    tel = Telemetry.from_env(settings.service, settings.instance, version)
    ctx = ServiceContext(
        settings=settings, config=config, nc=nc, js=nc.jetstream(), stopping=stopping,
        telemetry=tel,
    )  # fmt: skip
    tokens = tel.activate()  # the body's tasks report to `tel`
    runner = await _start_health(ctx)
    log.info(
        "%s started (instance %s); health on http://%s:%d/healthz, NATS %s",
        settings.service,
        settings.instance,
        settings.health_host,
        ctx.health_port,
        config.nats.url,
    )
    await _register(ctx, version)
    poll = asyncio.create_task(
        _poll(ctx, float(os.environ.get(names.ENV_METRICS_POLL, POLL_INTERVAL)))
    )
    status = 0
    try:
        await body(ctx)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        log.info("%s stopped while starting", settings.service)  # ctx.startup, interrupted
    except ConfigError as e:
        # found only once connected (a route of the config file whose sink cannot be
        # built): the user's mistake, reported as a bad config file is
        for line in e.errors:
            log.error("%s", line)
        status = 2
    except Exception:
        log.exception("%s failed", settings.service)
        status = 1
    finally:
        stopping.set()
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("drain did not finish cleanly: %r", e)
        await runner.cleanup()
        await asyncio.to_thread(tel.shutdown)  # export the spans still queued
        tel.deactivate(tokens)
    log.info("%s stopped", settings.service)
    return status
