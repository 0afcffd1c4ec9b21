"""Connecting to NATS: the connection options in one place, for services and commands.

A service connects with `connect_service`: it tries again every few seconds (a NATS that is
still starting, a cluster node that is down) until connected or told to stop, and then
reconnects for ever. A command connects with `connect_once`: one try per server, so a user
who forgot `vebus up` hears so at once. Both stop at once when NATS refuses the
credentials or its certificate (or ours): retrying cannot help, and the error says what
to check. TLS (`nats.tls`: a CA, and a client certificate for mutual TLS) and credentials
files (`nats.creds`: NKEY and JWT) are set here for every connection vebus makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from vebus import aio
from vebus.config import NatsConfig, NatsTls
from vebus.errors import ConfigError, NatsAuthError, NatsTlsError

__all__ = [
    "ConnectFailedError",
    "connect_once",
    "connect_service",
    "is_auth_error",
    "is_tls_error",
    "quiet_tls_noise",
    "tls_context",
]

log = logging.getLogger(__name__)

#: the longest wait between two attempts of a service to connect
MAX_CONNECT_DELAY = 5.0


class ConnectFailedError(Exception):
    """A command could not connect; `reason` is the last error, `auth` whether NATS
    refused the credentials, `tls` whether the TLS handshake failed."""

    def __init__(self, reason: str, *, auth: bool, tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth
        self.tls = tls


class _TlsEofNoise(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl":
    nats-py's protocol returns True there on every TLS connection, and the line, printed at
    each close, says nothing to a person reading the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


def quiet_tls_noise() -> None:
    """Install the asyncio log filter (idempotent; called by the runtime and the CLI)."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _TlsEofNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_TlsEofNoise())


def is_auth_error(e: BaseException) -> bool:
    """Whether a connection error says NATS refused the credentials."""
    text = str(e).lower()
    return "authorization violation" in text or "authentication" in text


def is_tls_error(e: BaseException) -> bool:
    """Whether a connection error is a failed TLS handshake or a TLS mismatch (a server
    that requires TLS, or one that has none)."""
    if isinstance(e, ssl.SSLError):
        return True
    text = str(e).lower()
    return "tls required" in text or "secure connection" in text or "tls not" in text


def tls_problem(e: BaseException, url: str) -> str:
    """What a failed TLS handshake means, in words that say what to fix."""
    text = str(e)
    if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"NATS at {url}: TLS: the server's certificate is not trusted ({text}): set "
            "nats.tls.ca_file to the CA that signed it (and nats.tls.server_name if the "
            "certificate names another host)"
        )
    if "certificate required" in text.lower() or "bad certificate" in text.lower():
        return (
            f"NATS at {url}: TLS: the server refused this client ({text}): it verifies "
            "clients; give nats.tls.cert_file and nats.tls.key_file, signed by a CA it trusts"
        )
    if "tls required" in text.lower() or "secure connection" in text.lower():
        return f"NATS at {url} requires TLS ({text}): configure nats.tls"
    return f"NATS at {url}: TLS handshake failed ({text}): check nats.tls"


def _closed(e: BaseException) -> bool:
    """A connection the server closed under us (reset, broken pipe, nats-py's "lost")."""
    return (
        isinstance(e, ConnectionResetError | BrokenPipeError) or "connection lost" in str(e).lower()
    )


def tls_context(tls: NatsTls) -> ssl.SSLContext:
    """The client TLS context for `nats.tls`: verifying the server, with our certificate."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"nats.tls: cannot load the certificate files: {e}"]) from None
    return context


def _options(
    cfg: NatsConfig, servers: list[str], user: str | None, password: str | None
) -> dict[str, Any]:
    """The nats.connect arguments every vebus connection shares."""
    quiet_tls_noise()
    options: dict[str, Any] = {
        "servers": servers,
        "connect_timeout": float(cfg.connect_timeout),
    }
    if cfg.creds:
        options["user_credentials"] = cfg.creds
    else:
        options["user"], options["password"] = user, password
    if cfg.tls is not None:
        options["tls"] = tls_context(cfg.tls)
        if cfg.tls.server_name:
            options["tls_hostname"] = cfg.tls.server_name
    return options


async def connect_service(cfg: NatsConfig, name: str, stopping: asyncio.Event) -> Client | None:
    """Connect, trying again until connected (the Client) or `stopping` is set (None).

    NatsAuthError at once when NATS refuses the credentials.
    """
    delay = 0.5
    refused = asyncio.Event()
    reason: list[BaseException] = []

    async def on_error(e: Exception) -> None:
        if is_auth_error(e) or is_tls_error(e):
            reason.append(e)
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
            if is_tls_error(reason[0]):
                raise NatsTlsError(tls_problem(reason[0], cfg.url))
            who = (
                f"user {cfg.user!r}"
                if cfg.user
                else (f"the credentials file {cfg.creds}" if cfg.creds else "no credentials")
            )
            raise NatsAuthError(
                f"NATS at {cfg.url} refused {who} ({reason[0]}): check nats.user and "
                "nats.password (or nats.creds) in the config and the server's accounts"
            )
        try:
            return attempt.result()
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if is_tls_error(e):
                raise NatsTlsError(tls_problem(e, cfg.url)) from e
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
        seen = (*errors, e)
        tls = next((x for x in seen if is_tls_error(x)), None)
        if tls is not None:
            raise ConnectFailedError(tls_problem(tls, url), auth=False, tls=True) from None
        if cfg.tls is not None and not cfg.tls.cert_file and any(_closed(x) for x in seen):
            # TLS 1.3: a server that wants a client certificate may close the connection
            # after the handshake, before its alert is read
            raise ConnectFailedError(
                f"NATS at {url} closed the connection during TLS set-up: if it verifies "
                "clients, give nats.tls.cert_file and nats.tls.key_file",
                auth=False,
                tls=True,
            ) from None
        cause = errors[-1] if errors else e
        raise ConnectFailedError(
            str(cause) or type(cause).__name__, auth=any(is_auth_error(x) for x in seen)
        ) from None
