"""What the vebus subcommands share: config and NATS options, connecting, printing errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from vebus import names
from vebus.config import Config, NatsConfig, NatsTls, load_config
from vebus.errors import ConfigError, VebusError
from vebus.local.natsauth import (
    DEFAULT_AUTH_PATH,
    PASSWORD_ENV,
    USER_ENV,
    is_local_url,
    password_var,
    read_env_file,
)
from vebus.local.tls import DEFAULT_TLS_DIR, LocalTls
from vebus.routing.source import RouteView
from vebus.runtime.connect import ConnectFailedError, connect_once

__all__ = [
    "check_route_name",
    "config_option",
    "connect",
    "credentials",
    "echo_config_errors",
    "fail",
    "load_or_default",
    "nats_connection",
    "nats_session",
    "nats_url_option",
    "run_async",
    "running_routes",
    "time_param",
]

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=lambda: os.environ.get(names.ENV_CONFIG, "vebus.yaml"),
    show_default="vebus.yaml, or $VEBUS_CONFIG",
    help="The vebus.yaml to use.",
)
nats_url_option = click.option(
    "--nats-url",
    default=lambda: os.environ.get(names.ENV_NATS_URL),
    help="NATS server URL (default: the config's nats.url, or $VEBUS_NATS_URL).",
)


def fail(message: str, status: int = 1) -> NoReturn:
    """Print `vebus: message` to stderr and exit with `status` (no stack trace)."""
    click.echo(f"vebus: {message}", err=True)
    sys.exit(status)


def load_or_default(config_path: str, *, required: bool = False) -> Config:
    """The config at `config_path`; a default one when it does not exist and is optional."""
    if not os.path.exists(config_path) and not required:
        return Config()
    try:
        # a command needs only NATS's secrets: sink tokens stay with the dispatcher
        return load_config(config_path, service="cli")
    except ConfigError as e:
        echo_config_errors(config_path, e.errors)
        sys.exit(2)


def echo_config_errors(path: str | os.PathLike[str], errors: Iterable[str]) -> None:
    """Print a ConfigError's lines to stderr, each naming the file `path` once.

    A line about reading or parsing the file names it already (`x.yaml: not valid YAML
    ...`); a line about a part of it (`routes[2].sink.url: ...`) gets the name in front.
    """
    named = (f"{path}: ", f"{Path(path)}: ")
    for line in errors:
        click.echo(line if line.startswith(named) else f"{path}: {line}", err=True)


def credentials(config: Config, url: str) -> tuple[str | None, str | None, str]:
    """The NATS user and password a command logs in with, and where they came from.

    The config's nats.user first; else $VEBUS_NATS_USER / $VEBUS_NATS_PASSWORD; else, for
    a NATS on this machine, the admin user `vebus up --nats-auth` generated into
    .vebus/nats-auth.env here (the folder `vebus up` ran in), so that an operator never
    copies passwords. None: no login (a NATS without authentication).
    """
    if config.nats.user:
        return config.nats.user, config.nats.password, "nats.user in the config"
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV], os.environ.get(PASSWORD_ENV), f"${USER_ENV}"
    if is_local_url(url) and DEFAULT_AUTH_PATH.is_file():
        with contextlib.suppress(OSError):
            password = read_env_file(DEFAULT_AUTH_PATH).get(password_var("admin"))
            if password:
                return "admin", password, str(DEFAULT_AUTH_PATH)
    return None, None, "no user given"


def nats_settings(config: Config, url: str) -> NatsConfig:
    """The config's NATS settings; for a NATS on this machine that `vebus up --nats-tls`
    started in this folder, with its CA and client certificate when the config names none."""
    local = LocalTls(DEFAULT_TLS_DIR)
    if config.nats.tls is None and is_local_url(url) and local.ca_file.is_file():
        tls = NatsTls(ca_file=str(local.ca_file), cert_file=str(local.client_cert),
                      key_file=str(local.client_key))  # fmt: skip
        return msgspec.structs.replace(config.nats, tls=tls)
    return config.nats


async def connect(config: Config, nats_url: str | None) -> Client:
    """Connect to NATS once (a command does not wait for a server that is not there)."""
    url = nats_url or config.nats.url
    user, password, source = credentials(config, url)
    try:
        return await connect_once(nats_settings(config, url), url=url, user=user,
                                  password=password, name="vebus-cli")  # fmt: skip
    except ConnectFailedError as e:
        if e.tls:
            fail(e.reason)
        if e.auth:
            who = f"user {user!r} ({source})" if user else "a connection without a user"
            fail(
                f"NATS at {url} refused {who}: for `vebus up --nats-auth`, run vebus in the "
                f"folder it ran in (it reads the admin user from {DEFAULT_AUTH_PATH}), or set "
                f"{USER_ENV}=admin and {PASSWORD_ENV} to VEBUS_NATS_ADMIN_PASSWORD of "
                "<data-dir>/nats-auth.env; for another NATS, give nats.user and nats.password "
                "in the config"
            )
        fail(f"cannot connect to NATS at {url}: {e.reason} (is `vebus up` running?)")


def run_async(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run a coroutine for a command, turning vebus errors into one clear line."""
    try:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]
    except VebusError as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)


@contextlib.asynccontextmanager
async def nats_connection(config: Config, nats_url: str | None) -> AsyncIterator[Client]:
    """A NATS connection, closed at the end; any NATS failure inside becomes one line."""
    url = nats_url or config.nats.url
    nc = await connect(config, nats_url)
    try:
        yield nc
    except (nats.errors.Error, TimeoutError) as e:
        if isinstance(e, ServiceUnavailableError) and not e.description:
            # no responders to $JS.API: what a server without -js answers
            raise VebusError(
                f"NATS at {url} has no JetStream: vebus needs nats-server -js "
                "(vebus up starts it so)"
            ) from None
        if isinstance(e, APIError) and e.description:
            raise VebusError(f"NATS at {url}: {e.description}") from None
        raise VebusError(f"NATS request to {url} failed: {e!r}") from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await nc.close()


@contextlib.asynccontextmanager
async def nats_session(
    config: Config, nats_url: str | None, *, stream: str
) -> AsyncIterator[JetStreamContext]:
    """JetStream on a NATS that has `stream`; any NATS failure inside becomes one line.

    A missing stream means no vebus service has run against this server yet, which is
    what a user needs to hear instead of "stream not found".
    """
    url = nats_url or config.nats.url
    async with nats_connection(config, nats_url) as nc:
        js = nc.jetstream()
        try:
            await js.stream_info(stream)
        except NotFoundError:
            raise VebusError(
                f"NATS at {url} has no {stream} stream: no vebus service has "
                "run against it yet (or --nats-url points at another server)"
            ) from None
        yield js


async def running_routes(config: Config, js: JetStreamContext) -> RouteView:
    """The routes the services run now: the stored set, else the config file's."""
    from vebus.routing.source import RouteSource
    from vebus.routing.store import open_route_store

    store = await open_route_store(js, replicas=config.nats.replicas)
    return await RouteSource(store, config, service="cli").load()


def check_route_name(view: RouteView, option: str, name: str) -> None:
    """Exit 2 unless `name` is a route of `view` (the running set) or there is none."""
    known = list(view.routes)
    if known and name not in known:
        where = "the config file" if view.from_config else f"revision {view.revision}"
        fail(
            f"{option}: no route {name!r} in the running routes ({where}: {', '.join(known)})",
            2,
        )


def time_param(_: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    """A click callback: RFC 3339 or an age (`1h`) as a datetime, or a usage error."""
    from vebus.timespec import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None
