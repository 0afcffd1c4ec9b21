"""Connecting to NATS: the connection options in one place, for services and commands.

A service connects with `connect_service`: it tries again every few seconds (a NATS that is
still starting, a cluster node that is down) until connected or told to stop, and then
reconnects for ever. A command connects with `connect_once`: one try per server, so a user
who forgot `vebus up` hears so at once. Both stop at once when NATS refuses the
credentials: retrying cannot help, and the error says what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from vebus import aio
from vebus.config import NatsConfig
from vebus.errors import NatsAuthError

__all__ = ["ConnectFailedError", "connect_once", "connect_service", "is_auth_error"]

log = logging.getLogger(__name__)

#: the longest wait between two attempts of a service to connect
MAX_CONNECT_DELAY = 5.0


class ConnectFailedError(Exception):
    """A command could not connect; `reason` is the last error, `auth` whether NATS
    refused the credentials."""

    def __init__(self, reason: str, *, auth: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth


def is_auth_error(e: BaseException) -> bool:
    """Whether a connection error says NATS refused the credentials."""
    text = str(e).lower()
    return "authorization violation" in text or "authentication" in text


def _options(
    cfg: NatsConfig, servers: list[str], user: str | None, password: str | None
) -> dict[str, Any]:
    """The nats.connect arguments every vebus connection shares."""
    return {
        "servers": servers,
        "user": user,
        "password": password,
        "connect_timeout": float(cfg.connect_timeout),
    }


async def connect_service(cfg: NatsConfig, name: str, stopping: asyncio.Event) -> Client | None:
    """Connect, trying again until connected (the Client) or `stopping` is set (None).

    NatsAuthError at once when NATS refuses the credentials.
    """
    delay = 0.5
    refused = asyncio.Event()
    reason: list[str] = []

    async def on_error(e: Exception) -> None:
        if is_auth_error(e):
            reason.append(str(e))
            refused.set()
        else:
            log.warning("NATS: %r", e)

    while not stopping.is_set():
        attempt = asyncio.create_task(
            nats.connect(
                **_options(cfg, cfg.servers(), cfg.user, cfg.password),
                name=name,
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
            who = f"user {cfg.user!r}" if cfg.user else "no credentials"
            raise NatsAuthError(
                f"NATS at {cfg.url} refused {who} ({reason[0]}): check nats.user and "
                "nats.password in the config and the server's accounts"
            )
        try:
            return attempt.result()
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if is_auth_error(e):
                raise NatsAuthError(f"NATS at {cfg.url} refused the credentials: {e}") from e
            log.warning("cannot reach NATS at %s (%r); trying again in %.0fs", cfg.url, e, delay)
            await aio.sleep(delay, stopping)
            delay = min(delay * 2, MAX_CONNECT_DELAY)
    return None


async def connect_once(
    cfg: NatsConfig, *, url: str, user: str | None, password: str | None, name: str
) -> Client:
    """Connect once; ConnectFailedError with the reason a person should read.

    nats-py never gives up on a server when `max_reconnect_attempts` is 0 (it means "no
    limit" in its initial connect loop), so each server gets one retry, and its errors are
    collected for the one line the user reads instead of printed as tracebacks.
    """
    errors: list[Exception] = []

    async def collect(e: Exception) -> None:
        errors.append(e)

    servers = [u.strip() for u in url.split(",") if u.strip()]
    try:
        return await nats.connect(
            **_options(cfg, servers, user, password),
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            allow_reconnect=False,
            error_cb=collect,
            name=name,
        )
    except (TimeoutError, OSError, nats.errors.Error) as e:
        cause = errors[-1] if errors else e
        raise ConnectFailedError(
            str(cause) or type(cause).__name__, auth=any(is_auth_error(x) for x in (*errors, e))
        ) from None
