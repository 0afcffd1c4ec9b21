"""What the vebus subcommands share: config and NATS options, connecting, printing errors."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import nats
import nats.errors
from nats.aio.client import Client

from vebus.config import Config, load_config
from vebus.errors import ConfigError, VebusError

__all__ = [
    "config_option",
    "connect",
    "fail",
    "load_or_default",
    "nats_url_option",
    "run_async",
]

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=lambda: os.environ.get("VEBUS_CONFIG", "vebus.yaml"),
    show_default="vebus.yaml, or $VEBUS_CONFIG",
    help="The vebus.yaml to use.",
)
nats_url_option = click.option(
    "--nats-url",
    default=lambda: os.environ.get("VEBUS_NATS_URL"),
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
        for line in e.errors:
            click.echo(f"{config_path}: {line}", err=True)
        sys.exit(2)


async def connect(config: Config, nats_url: str | None) -> Client:
    """Connect to NATS once (a command does not wait for a server that is not there)."""
    url = nats_url or config.nats.url
    try:
        return await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            user=config.nats.user,
            password=config.nats.password,
            connect_timeout=float(config.nats.connect_timeout),
            max_reconnect_attempts=0,
            allow_reconnect=False,
            name="vebus-cli",
        )
    except (TimeoutError, OSError, nats.errors.Error) as e:
        fail(f"cannot connect to NATS at {url}: {e!r} (is `vebus up` running?)")


def run_async(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run a coroutine for a command, turning vebus errors into one clear line."""
    try:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]
    except VebusError as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)
