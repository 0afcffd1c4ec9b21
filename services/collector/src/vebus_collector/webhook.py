"""The webhook event source: CloudEvents POSTed over HTTP, published to VEBUS_EVENTS.

Binary mode (`ce-` headers, data in the body) and structured mode (`Content-Type:
application/cloudevents+json`, what `vebus tail --json` prints) are accepted, one event per
request, as `vebus.bus.http` reads them, with bearer and/or basic authentication. An event
carrying `eventclass`, which vebus sets on vSphere events only, is refused. Each event goes
to `vebus.events.webhook.<type token>` with Msg-Id `webhook:<source>:<id>` (a retry by the
sender inside JetStream's duplicate window is stored once), keeping its own source and id.
The answer comes after JetStream's publish ack: 200 stored (`"duplicate": true` when it was
already), 400 malformed or reserved (the reason in the body; nothing published), 401 not
authenticated, 413 larger than the limit, 415 batch mode or a format other than JSON, 503
JetStream did not acknowledge (try again later).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from nats.js import JetStreamContext

from vebus import names
from vebus.bus import signing
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.http import from_http
from vebus.bus.publish import publish
from vebus.config import WebhookRateLimit, WebhookSourceConfig
from vebus.errors import (
    InvalidEventError,
    PublishError,
    RequestRefusedError,
    UnsupportedModeError,
)
from vebus.names import MSG_ID, TRACEPARENT
from vebus_collector.events import PAYLOAD_MARGIN

__all__ = ["RESERVED_EXTENSIONS", "WebhookSource", "parse_request"]

log = logging.getLogger(__name__)

SOURCE = names.WEBHOOK_SOURCE

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: set by vebus on vSphere events only (DESIGN.md, Events): a webhook event may not claim them
RESERVED_EXTENSIONS = frozenset({"eventclass"})


def parse_request(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in a request, either mode; RequestRefusedError when it cannot be taken.

    Read by the one HTTP binding (`vebus.bus.http`); refused besides: an event carrying
    an attribute vebus sets on vSphere events only.
    """
    try:
        event = from_http(headers, body)
    except UnsupportedModeError as e:
        raise RequestRefusedError(str(e), 415) from None
    except InvalidEventError as e:
        raise RequestRefusedError(str(e)) from None
    reserved = sorted(RESERVED_EXTENSIONS & event.extensions.keys())
    if reserved:
        raise RequestRefusedError(
            f"{', '.join(reserved)}: reserved for the events vebus reads from vCenter "
            "(an event received over HTTP may not carry it)"
        )
    return event


class _ClientLimit:
    """The `rate_limit` per client address: a moving window (the `limits` library)."""

    def __init__(self, cfg: WebhookRateLimit) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self._item = RateLimitItemPerSecond(cfg.requests, int(float(cfg.per)))
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, client: str) -> int:
        """0 when `client` may send this request (it is counted); else the seconds until
        it may again (Retry-After)."""
        if self._limiter.hit(self._item, client):
            return 0
        reset = self._limiter.get_window_stats(self._item, client).reset_time
        return max(1, math.ceil(reset - time.time()))


class WebhookSource:
    """The HTTP endpoint; `start()` listens, `stop()` finishes requests in flight."""

    def __init__(self, cfg: WebhookSourceConfig, js: JetStreamContext, max_payload: int) -> None:
        self.cfg = cfg
        self.js = js
        #: the whole NATS message (headers and body) stays this far under max_payload
        self.limit = max_payload - PAYLOAD_MARGIN
        self.max_body = min(cfg.max_body, self.limit) if cfg.max_body else self.limit
        self.port = 0
        self.counts = {"published": 0, "duplicates": 0, "refused": 0, "limited": 0}
        self._runner: web.AppRunner | None = None
        self._limit = _ClientLimit(cfg.rate_limit) if cfg.rate_limit else None

    def status(self) -> dict[str, Any]:
        """The /readyz view."""
        return {"listening": self._runner is not None, "port": self.port, **self.counts}

    async def start(self) -> None:
        # aiohttp itself answers 413 past client_max_size; the handler checks again
        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(self.cfg.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.cfg.listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        addresses = self._runner.addresses  # the bound address: port 0 picks a free one
        self.port = int(addresses[0][1]) if addresses else int(port)
        auth = [
            m
            for m, on in (
                ("bearer", self.cfg.bearer_token),
                ("basic", self.cfg.username),
                ("hmac", self.cfg.hmac),
            )
            if on is not None
        ]
        log.info(
            "webhook source on http://%s:%d%s (auth: %s; max body %d bytes)",
            host,
            self.port,
            self.cfg.path,
            ", ".join(auth) or "none (anonymous)",
            self.max_body,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorized(self, request: web.Request) -> bool:
        """Authorised by its Authorization header (or needing none); an `hmac` source
        authorises a request by its signature instead, once the body is read."""
        cfg = self.cfg
        if cfg.bearer_token is None and cfg.username is None:
            return cfg.anonymous or cfg.hmac is not None
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.cfg.bearer_token is not None:
            return hmac.compare_digest(credentials.strip().encode(), self.cfg.bearer_token.encode())
        if scheme == "basic" and self.cfg.username is not None and self.cfg.password is not None:
            try:
                user, _, password = base64.b64decode(credentials.strip()).decode().partition(":")
            except (binascii.Error, ValueError):
                return False
            ok_user = hmac.compare_digest(user.encode(), self.cfg.username.encode())
            ok_pass = hmac.compare_digest(password.encode(), self.cfg.password.encode())
            return ok_user and ok_pass
        return False

    def _refuse(self, status: int, reason: str, **headers: str) -> web.Response:
        self.counts["refused"] += 1
        return web.json_response({"error": reason}, status=status, headers=headers or None)

    async def _handle(self, request: web.Request) -> web.Response:
        if self._limit is not None and (wait := self._limit.hit(request.remote or "")):
            self.counts["limited"] += 1
            return self._refuse(
                429, "too many requests from this client", **{"Retry-After": str(wait)}
            )
        if not self._authorized(request):
            challenge = []
            if self.cfg.bearer_token is not None:
                challenge.append('Bearer realm="vebus"')
            if self.cfg.username is not None:
                challenge.append('Basic realm="vebus"')
            return self._refuse(
                401,
                "authentication required",
                **{"WWW-Authenticate": ", ".join(challenge)},
            )
        if request.content_length is not None and request.content_length > self.max_body:
            return self._refuse(413, f"body larger than {self.max_body} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"body larger than {self.max_body} bytes")
        if len(body) > self.max_body:
            return self._refuse(413, f"body larger than {self.max_body} bytes")
        if (signed := self.cfg.hmac) is not None and (
            problem := signing.verify(
                signed.secret,
                body,
                request.headers.get(signed.header),
                request.headers.get(names.H_SIGNED_AT),
                tolerance=float(signed.tolerance),
            )
        ):
            log.debug("webhook request refused: %s", problem)
            return self._refuse(401, problem)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = parse_request(headers, body)
        except RequestRefusedError as e:
            log.debug("webhook request refused: %s", e.reason)
            return self._refuse(e.status, e.reason)
        extra = {MSG_ID: f"webhook:{event.source}:{event.id}"}
        if TRACEPARENT in headers and not _CONTROL.search(headers[TRACEPARENT]):
            extra[TRACEPARENT] = headers[TRACEPARENT]
        out_headers = to_headers(event, extra)
        size = len(event.data) + sum(len(k) + len(v) + 4 for k, v in out_headers.items())
        if size > self.limit:
            return self._refuse(
                413, f"event is {size} bytes with its headers, the limit is {self.limit}"
            )
        subject = names.event_subject(SOURCE, event.type)
        try:
            ack = await publish(self.js, subject, event.data, out_headers)
        except PublishError as e:
            log.warning("webhook event %s from %s not stored: %s", event.id, event.source, e)
            return web.json_response(
                {"error": "not stored, try again later"}, status=503, headers={"Retry-After": "5"}
            )
        self.counts["duplicates" if ack.duplicate else "published"] += 1
        return web.json_response(
            {"id": event.id, "subject": subject, "duplicate": bool(ack.duplicate)}
        )
