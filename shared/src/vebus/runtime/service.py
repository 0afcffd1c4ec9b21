"""Running a vebus service: settings, NATS connection, health endpoints, graceful shutdown.

`run_service` connects to NATS (retrying until it can or until told to stop), serves
`/healthz` (the process is alive) and `/readyz` (connected, and the service said it is
ready), registers the process as a NATS micro service so `$SRV.PING` finds every replica,
runs the service body, and on SIGTERM or SIGINT sets `ctx.stopping`: the body stops
fetching and finishes what it has in flight, then the connection is drained and the
process exits 0.

Observability lives here too: the service's `vebus.runtime.telemetry.Telemetry` (tracing from the
OTEL_* variables, Prometheus metrics served at `/metrics` on the health port, a background
poll of consumer backlogs), logs as text or JSON (`--log-format`, VEBUS_LOG_FORMAT) with
the handled message's event id, route, sink and trace id, and a micro-service `status`
endpoint whose `$SRV.STATS` data is this replica's status (for `vebus status`).
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
from typing import Any

import nats
import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from vebus import names
from vebus.config import Config, load_config
from vebus.errors import ConfigError, VebusError
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


#: default health ports, one per service so they can share a host under `vebus up`
DEFAULT_HEALTH_PORTS = {"collector": 8181, "filter": 8182, "dispatcher": 8183, "deadletter": 8184}
LOG_FORMATS = ("text", "json")
#: seconds between two polls of consumer backlogs and stream depths (env VEBUS_METRICS_POLL)
POLL_INTERVAL = 15.0
#: the micro-service endpoint every replica answers with its status (`vebus status`)
STATUS_ENDPOINT = "status"


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

    def details(self) -> dict[str, Any]:
        """The /readyz extra fields as they are now."""
        return {k: v() if callable(v) else v for k, v in self.health_details.items()}


def parse_settings(service: str, argv: Sequence[str] | None = None) -> ServiceSettings:
    """Settings from the command line, falling back to VEBUS_CONFIG and friends."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog=f"python -m vebus_{service}",
        description=f"The vebus {service} service.",
    )
    p.add_argument(
        "--config",
        default=env.get("VEBUS_CONFIG", "vebus.yaml"),
        help="the vebus.yaml to load (env VEBUS_CONFIG; default ./vebus.yaml)",
    )
    p.add_argument(
        "--health-host",
        default=env.get("VEBUS_HEALTH_HOST", "127.0.0.1"),
        help="address of /healthz and /readyz (env VEBUS_HEALTH_HOST; default 127.0.0.1)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(env.get("VEBUS_HEALTH_PORT", DEFAULT_HEALTH_PORTS.get(service, 0))),
        help="port of /healthz and /readyz, 0 for any free port (env VEBUS_HEALTH_PORT)",
    )
    p.add_argument(
        "--log-level",
        default=env.get("VEBUS_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(env VEBUS_LOG_LEVEL; default INFO)",
    )
    p.add_argument(
        "--log-format",
        default=env.get("VEBUS_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text, or json: one JSON object a line with event_id, route, sink and trace_id "
        "when there is one (env VEBUS_LOG_FORMAT; default text)",
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
        ok = ctx.ready and ctx.nc.is_connected and not ctx.stopping.is_set()
        body: dict[str, Any] = {
            "ready": ok,
            "nats": ctx.nc.is_connected,
            "service": ctx.settings.service,
        }
        for key, value in ctx.health_details.items():
            body[key] = value() if callable(value) else value
        return web.json_response(body, status=200 if ok else 503)

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
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    ctx.health_port = sockets[0].getsockname()[1] if sockets else ctx.settings.health_port
    return runner


class NatsAuthError(VebusError):
    """NATS refused the credentials: retrying cannot help."""


def _is_auth_error(e: BaseException) -> bool:
    text = str(e).lower()
    return "authorization violation" in text or "authentication" in text


async def _connect(config: Config, name: str, stopping: asyncio.Event) -> Client | None:
    """Connect to NATS, trying again every few seconds until connected or told to stop.

    Wrong credentials are not retried: NatsAuthError says so at once.
    """
    servers = config.nats.servers()
    delay = 0.5
    refused = asyncio.Event()
    reason: list[str] = []

    async def on_error(e: Exception) -> None:
        if _is_auth_error(e):
            reason.append(str(e))
            refused.set()
        else:
            log.warning("NATS: %r", e)

    while not stopping.is_set():
        attempt = asyncio.create_task(
            nats.connect(
                servers=servers,
                name=name,
                user=config.nats.user,
                password=config.nats.password,
                connect_timeout=float(config.nats.connect_timeout),
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                allow_reconnect=True,
                error_cb=on_error,
            )
        )
        watch = asyncio.create_task(refused.wait())
        await asyncio.wait({attempt, watch}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if refused.is_set():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            who = f"user {config.nats.user!r}" if config.nats.user else "no credentials"
            raise NatsAuthError(
                f"NATS at {config.nats.url} refused {who} ({reason[0]}): check nats.user and "
                "nats.password in the config and the server's accounts"
            )
        try:
            return attempt.result()
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if _is_auth_error(e):
                raise NatsAuthError(
                    f"NATS at {config.nats.url} refused the credentials: {e}"
                ) from e
            log.warning(
                "cannot reach NATS at %s (%r); trying again in %.0fs", config.nats.url, e, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 5.0)
    return None


Body = Callable[[ServiceContext], Awaitable[None]]


async def _poll(ctx: ServiceContext, interval: float) -> None:
    """Refresh the gauges that need a NATS round trip: the backlog of each consumer this
    replica runs, and (deadletter only, one service is enough) the depth of each stream."""
    tel = ctx.telemetry
    assert tel is not None
    m = tel.metrics
    while not ctx.stopping.is_set():
        for stream, durable in sorted(tel.consumers):
            try:
                info = await ctx.js.consumer_info(stream, durable)
            except NotFoundError:  # deleted (a route removed live): stop reporting it
                tel.consumers.discard((stream, durable))
                for gauge in (m.pending, m.ack_pending, m.redelivered):
                    with contextlib.suppress(KeyError):
                        gauge.remove(stream, durable)
                continue
            except (TimeoutError, nats.errors.Error) as e:
                m.poll_errors.labels().inc()
                log.debug("metrics poll of %s failed: %r", durable, e)
                continue
            m.pending.labels(stream, durable).set(info.num_pending or 0)
            m.ack_pending.labels(stream, durable).set(info.num_ack_pending or 0)
            m.redelivered.labels(stream, durable).set(info.num_redelivered or 0)
        try:
            if ctx.settings.service == "deadletter":
                for stream in (names.EVENTS_STREAM, names.ROUTES_STREAM, names.DLQ_STREAM):
                    state = (await ctx.js.stream_info(stream)).state
                    m.stream_messages.labels(stream).set(state.messages)
                    m.stream_bytes.labels(stream).set(state.bytes)
        except (TimeoutError, nats.errors.Error) as e:
            m.poll_errors.labels().inc()
            log.debug("metrics poll failed: %r", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), interval)


def _status(ctx: ServiceContext, version: str, started: float) -> dict[str, Any]:
    """This replica as `vebus status` shows it (the data of its micro-service stats)."""
    out: dict[str, Any] = {
        "service": ctx.settings.service,
        "instance": ctx.settings.instance,
        "version": version,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "health_port": ctx.health_port,
        "ready": ctx.ready and ctx.nc.is_connected and not ctx.stopping.is_set(),
        "uptime": round(time.time() - started, 1),
        "details": ctx.details(),
    }
    if (tel := ctx.telemetry) is not None:
        m = tel.metrics
        out["counters"] = {
            "received": m.total(m.received),
            "published": m.total(m.published),
            "delivered": m.total(m.delivered),
            "failed": m.total(m.dead_lettered),
        }
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
            name=f"vebus-{settings.service}",
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
            subject=f"vebus.status.{settings.service}.{settings.instance}",
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
        nc = await _connect(config, f"vebus-{settings.service}-{settings.instance}", stopping)
    except NatsAuthError as e:
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
    token = tel.activate()  # the body's tasks report to `tel`
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
    from vebus.runtime.metrics import VCenterCollector

    # the collector's body sets its vCenters' /readyz details: scrapes read them from there
    tel.metrics.registry.register(VCenterCollector(lambda: ctx.details().get("vcenters") or {}))
    poll = asyncio.create_task(
        _poll(ctx, float(os.environ.get("VEBUS_METRICS_POLL", POLL_INTERVAL)))
    )
    status = 0
    try:
        await body(ctx)
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
        tel.deactivate(token)
    log.info("%s stopped", settings.service)
    return status
