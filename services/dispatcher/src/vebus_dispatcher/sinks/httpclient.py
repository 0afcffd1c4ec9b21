"""What the HTTP sinks share: keep-alive connections, auth, and answer handling.

Inside the dispatcher every HTTP sink sends through one aiohttp session of the process
(`shared_session`): one pool of keep-alive connections with no limit of its own, so a
thousand routes to the same server reuse a few dozen connections instead of keeping one
or more each (loadtest/RESULTS.md, routes). Isolation does not rest on the pool: each
route's worker has at most its `max_in_flight` requests out, so a hung server holds that
many connections and the other routes open or reuse others. Built outside the dispatcher
(tests, a sink made alone), a sink gets a session of its own whose pool holds at most the
route's `max_in_flight` connections. Keep-alive matters (loadtest/dispatcher.py measures it
against a new connection per request, and against a raw POST loop).
A 2xx is success; 429 and 5xx are retried (honouring `Retry-After`), as are timeouts and
connection failures; any other answer is permanent. Redirects are not followed.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from vebus import config, names
from vebus.bus import signing
from vebus.errors import DeliveryError, ErrorCode, PermanentDeliveryError, RetryableDeliveryError

__all__ = [
    "Answer",
    "Authenticator",
    "SinkSession",
    "new_session",
    "parse_retry_after",
    "redact",
    "request",
    "shared_session",
    "status_error",
]

#: how much of an error answer's body goes into the error message
DETAIL_CHARS = 200
#: the most of a successful answer that is read (the rest is discarded with the connection)
MAX_ANSWER = 1 << 20
#: seconds an idle keep-alive connection stays open
KEEPALIVE = 30.0


def shared_session(user_agent: str) -> aiohttp.ClientSession:
    """The one session of a dispatcher process that its HTTP sinks share (see above)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),  # each attempt has the route's timeout
        headers={"User-Agent": user_agent},
    )


class SinkSession:
    """The session an HTTP sink sends through: the process's shared one (closing it is
    its owner's business) or one of its own."""

    __slots__ = ("_own", "session")

    def __init__(self, session: aiohttp.ClientSession, *, own: bool) -> None:
        self.session = session
        self._own = own

    async def close(self) -> None:
        if self._own:
            await self.session.close()


def new_session(
    route: config.Route, user_agent: str, shared: aiohttp.ClientSession | None = None
) -> SinkSession:
    """The session of one sink: `shared` when given, else a pool of at most
    `max_in_flight` keep-alive connections of its own."""
    if shared is not None:
        return SinkSession(shared, own=False)
    connector = aiohttp.TCPConnector(
        limit=route.delivery.max_in_flight, keepalive_timeout=KEEPALIVE
    )
    own = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),  # each attempt has the route's timeout
        headers={"User-Agent": user_agent},
    )
    return SinkSession(own, own=True)


def redact(url: str) -> str:
    """The URL as errors and logs show it: scheme, host and port only. A webhook URL's path
    or query is often the credential itself (Slack, Teams, a token parameter)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    hidden = "/..." if parts.path not in ("", "/") or parts.query else "/"
    return f"{parts.scheme}://{host}{hidden}"


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful (2xx) answer."""

    status: int
    body: bytes
    headers: Mapping[str, str]


async def request(
    session: SinkSession,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
) -> Answer:
    """Send one request; the 2xx answer, or the DeliveryError that says how it failed
    (naming the URL without its path and query, which may hold a secret)."""
    try:
        async with session.session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            if 200 <= resp.status < 300:
                # the sink said 2xx: the event is delivered whatever happens to the rest
                try:
                    raw = await _read(resp, MAX_ANSWER)
                except aiohttp.ClientError:
                    raw = b""
                return Answer(resp.status, raw, resp.headers)
            raw = await resp.content.read(DETAIL_CHARS * 4)
            raise status_error(
                redact(url),
                resp.status,
                resp.reason or "",
                raw.decode("utf-8", "replace")[:DETAIL_CHARS],
                resp.headers.get("Retry-After"),
            )
    except aiohttp.ClientError as e:
        if isinstance(e, TimeoutError):
            raise RetryableDeliveryError(f"{redact(url)}: timed out", code=ErrorCode.TIMEOUT) from e
        raise RetryableDeliveryError(
            f"{redact(url)}: connection failed: {_describe(e)}", code=ErrorCode.CONNECTION_FAILURE
        ) from e


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body up to `limit` bytes; read to its end, the connection is reused."""
    if resp.content_length is not None and resp.content_length <= limit:
        return await resp.read()  # the usual short answer: one call, no buffer to grow
    body = bytearray()
    while len(body) < limit:
        chunk = await resp.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _describe(e: aiohttp.ClientError) -> str:
    """An aiohttp error without the request URL it may carry."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"{type(e).__name__}: {e.os_error.strerror or e.os_error}"
    return type(e).__name__


def status_error(
    url: str, status: int, reason: str, detail: str, retry_after: str | None
) -> DeliveryError:
    """The error for a non-2xx answer: 429 and 5xx retryable, anything else permanent."""
    text = " ".join(detail.split())
    message = f"{url} answered {status} {reason}".rstrip() + (f": {text}" if text else "")
    wait = parse_retry_after(retry_after)
    if status == 429:
        return RetryableDeliveryError(
            message, code=ErrorCode.THROTTLED, status=status, retry_after=wait
        )
    if 500 <= status <= 599:
        return RetryableDeliveryError(
            message, code=ErrorCode.HTTP_5XX, status=status, retry_after=wait
        )
    if 400 <= status <= 499:
        return PermanentDeliveryError(message, code=ErrorCode.HTTP_4XX, status=status)
    if 300 <= status <= 399:
        message += " (redirects are not followed: point the route's sink.url at the target)"
    return PermanentDeliveryError(message, code=ErrorCode.SINK_ERROR, status=status)


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), None if absent
    or unreadable; a date in the past gives 0."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class Authenticator:
    """The auth headers of one request: a fixed Authorization, or a signature of the body."""

    __slots__ = ("_fixed", "_hmac")

    def __init__(self, auth: config.HttpAuth | None) -> None:
        self._fixed: dict[str, str] = {}
        self._hmac: config.HmacAuth | None = None
        if isinstance(auth, config.BearerAuth):
            self._fixed["Authorization"] = f"Bearer {auth.token}"
        elif isinstance(auth, config.BasicAuth):
            pair = f"{auth.username}:{auth.password}".encode()
            self._fixed["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif isinstance(auth, config.HmacAuth):
            self._hmac = auth

    def headers(self, body: bytes | None) -> dict[str, str]:
        """The headers to add to a request that carries `body`."""
        if self._hmac is None:
            return self._fixed
        if not self._hmac.timestamp:
            return {self._hmac.header: signing.sign(self._hmac.secret, body or b"")}
        now = str(int(time.time()))
        return {
            self._hmac.header: signing.sign(self._hmac.secret, body or b"", now),
            names.H_SIGNED_AT: now,
        }
