"""Running a vebus service: settings, NATS connection, health endpoints, graceful shutdown.

`run_service` connects to NATS (retrying until it can or until told to stop), serves
`/healthz` (the process is alive) and `/readyz` (connected, and the service said it is
ready), registers the process as a NATS micro service so `$SRV.PING` finds every replica,
runs the service body, and on SIGTERM or SIGINT sets `ctx.stopping`: the body stops
fetching and finishes what it has in flight, then the connection is drained and the
process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from vebus.config import Config, load_config
from vebus.errors import ConfigError, VebusError

__all__ = ["ServiceContext", "ServiceSettings", "parse_settings", "run_service"]

log = logging.getLogger(__name__)

#: default health ports, one per service so they can share a host under `vebus up`
DEFAULT_HEALTH_PORTS = {"collector": 8181, "filter": 8182, "dispatcher": 8183, "deadletter": 8184}


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What a service process is started with (command line, or VEBUS_* variables)."""

    service: str
    config_path: str
    health_host: str = "127.0.0.1"
    health_port: int = 0
    log_level: str = "INFO"
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
    a = p.parse_args(argv)
    return ServiceSettings(
        service=service,
        config_path=a.config,
        health_host=a.health_host,
        health_port=a.health_port,
        log_level=a.log_level,
    )


def _setup_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {settings.service}[{settings.instance}] "
        "%(name)s: %(message)s",
    )
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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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


async def run_service(settings: ServiceSettings, body: Body, *, version: str = "0.1.0") -> int:
    """Run `body` as the service described by `settings`; returns the exit status."""
    _setup_logging(settings)
    try:
        config = load_config(settings.config_path, service=settings.service)
    except ConfigError as e:
        for line in e.errors:
            print(f"vebus {settings.service}: {line}", file=sys.stderr)
        return 2
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    try:
        nc = await _connect(config, f"vebus-{settings.service}-{settings.instance}", stopping)
    except NatsAuthError as e:
        log.error("%s", e)
        print(f"vebus {settings.service}: {e}", file=sys.stderr)
        return 2
    if nc is None:
        return 0
    ctx = ServiceContext(
        settings=settings, config=config, nc=nc, js=nc.jetstream(), stopping=stopping
    )
    runner = await _start_health(ctx)
    log.info(
        "%s started (instance %s); health on http://%s:%d/healthz, NATS %s",
        settings.service,
        settings.instance,
        settings.health_host,
        ctx.health_port,
        config.nats.url,
    )
    from nats import micro

    await micro.add_service(
        nc,
        name=f"vebus-{settings.service}",
        version=version,
        description=f"vebus {settings.service}",
        metadata={"instance": settings.instance, "health_port": str(ctx.health_port)},
    )
    status = 0
    try:
        await body(ctx)
    except Exception:
        log.exception("%s failed", settings.service)
        status = 1
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("drain did not finish cleanly: %r", e)
        await runner.cleanup()
    log.info("%s stopped", settings.service)
    return status
