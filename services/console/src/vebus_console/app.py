"""The console service: the web console as a vebus service (health, discovery, stop).

It reads the bus as the `vebus` command does, through its own NATS connection: the live
hub's core subscription, VEBUS_EVENTS windows for the history, the route store, dead
letters, micro-service discovery. The only things it writes are the route store (apply,
pause, resume); replays and purges are asked of the deadletter service's HTTP API. It
keeps nothing of its own: replicas behind a load balancer share the sign-in when they
share `console.session_key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from importlib.metadata import version
from typing import Any

import aiohttp
from aiohttp import web

from vebus import names
from vebus.config import read_yaml
from vebus.errors import ConfigError
from vebus.routing.source import RouteSource
from vebus.routing.store import open_route_store
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_console.auth import Authenticator
from vebus_console.deadletters import DeadletterApi
from vebus_console.live import LiveHub
from vebus_console.state import Console
from vebus_console.web import build_app, templates

__all__ = ["main"]

log = logging.getLogger(__name__)


def _listen(ctx: ServiceContext) -> tuple[str, int]:
    listen = os.environ.get(names.ENV_CONSOLE_LISTEN) or ctx.config.console.listen
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _tls(ctx: ServiceContext) -> ssl.SSLContext | None:
    tls = ctx.config.console.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _written_routes(path: str) -> list[Any]:
    """The config file's `routes:` as written (`${ENV}` unresolved: nothing to redact but
    what was typed into the file)."""
    try:
        raw = read_yaml(path)
    except ConfigError:
        return []
    routes = raw.get("routes") if isinstance(raw, dict) else None
    return list(routes) if isinstance(routes, list) else []


async def _body(ctx: ServiceContext) -> None:
    cfg = ctx.config.console
    store = await ctx.startup(
        "route store", lambda: open_route_store(ctx.js, replicas=ctx.config.nats.replicas)
    )
    hub = LiveHub(ctx.nc)
    await hub.start()
    tls = _tls(ctx)
    async with aiohttp.ClientSession() as http:
        console = Console(
            config=ctx.config,
            nc=ctx.nc,
            js=ctx.js,
            store=store,
            routes=RouteSource(store, ctx.config, service="console"),
            hub=hub,
            auth=Authenticator(
                cfg.users, session_key=cfg.session_key, max_age=float(cfg.session_max_age)
            ),
            dlq=DeadletterApi(http, cfg.deadletter_url, ctx.config.deadletter.api.token),
            templates=templates(),
            https=tls is not None,
            config_routes=_written_routes(ctx.settings.config_path),
        )
        runner = web.AppRunner(build_app(console), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        host, port = _listen(ctx)
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as e:
            await hub.close()
            await runner.cleanup()
            raise RuntimeError(f"console cannot listen on {host}:{port}: {e}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        url = f"{'https' if tls else 'http'}://{host}:{bound}/"
        ctx.health_details["url"] = url
        ctx.health_details["viewers"] = lambda: hub.viewers
        if not cfg.users:
            log.warning("no console.users: nobody can sign in (docs/console.md, Access)")
        ctx.ready = True
        log.info("console on %s (%d user(s))", url, len(cfg.users))
        sampler = asyncio.create_task(console.sample_forever(ctx.stopping))
        try:
            await ctx.stopping.wait()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await hub.close()  # ends the live streams, so the runner's cleanup is quick
            await runner.cleanup()


async def main(settings: ServiceSettings) -> int:
    """Run the console until SIGTERM; returns the exit status."""
    ours = version(names.distribution("console"))
    return await run_service(settings, _body, version=ours)
