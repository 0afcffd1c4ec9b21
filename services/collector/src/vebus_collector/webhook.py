"""The webhook event source: CloudEvents POSTed over HTTP, published to VEBUS_EVENTS.

Binary mode (`ce-` headers, data in the body) and structured mode (`Content-Type:
application/cloudevents+json`) are accepted, one event per request, with bearer and/or
basic authentication. Each event goes to `vebus.events.webhook.<type token>` with
Msg-Id `webhook:<source>:<id>` (a retry by the sender inside JetStream's duplicate window is
stored once), keeping its own source and id. The answer comes after JetStream's publish
ack: 200 stored (`"duplicate": true` when it was already), 400 malformed (the reason in the
body; nothing published), 401 not authenticated, 413 larger than the limit, 415 batch mode,
503 JetStream did not acknowledge (try again later).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import logging
import re
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import web
from nats.js import JetStreamContext

from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import publish
from vebus.config import WebhookSourceConfig
from vebus.errors import PublishError
from vebus.names import MSG_ID, TRACEPARENT
from vebus_collector.events import PAYLOAD_MARGIN

__all__ = ["STRUCTURED", "WebhookSource", "parse_request"]

log = logging.getLogger(__name__)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SOURCE = "webhook"

_ATTR_NAME = re.compile(r"^[a-z0-9]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CORE = ("id", "source", "type", "specversion")
_OPTIONAL = ("time", "subject", "dataschema")
#: set by vebus on vSphere events only (DESIGN.md): a webhook event may not claim it
_RESERVED_EXTENSIONS = frozenset({"eventclass"})


class BadRequest(Exception):
    """The request is not an acceptable CloudEvent; the message says why."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def parse_request(headers: dict[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in a request (header names lower-cased); BadRequest when malformed."""
    content_type = headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == BATCH:
        raise BadRequest(
            "batch mode (application/cloudevents-batch+json) is not supported: "
            "send one event per request",
            415,
        )
    if media == STRUCTURED:
        return _structured(body)
    if any(name.startswith("ce-") for name in headers):
        return _binary(headers, content_type or None, body)
    raise BadRequest(
        "not a CloudEvent: expected ce-specversion, ce-id, ce-source and ce-type headers "
        f"(binary mode) or Content-Type {STRUCTURED} (structured mode)"
    )


def _binary(headers: dict[str, str], content_type: str | None, body: bytes) -> CloudEvent:
    attrs: dict[str, str] = {}
    for name, raw in headers.items():
        if not name.startswith("ce-"):
            continue
        attr = name[3:]
        attrs[attr] = unquote(raw)  # the HTTP binding percent-encodes header values
    if "datacontenttype" in attrs:
        raise BadRequest("ce-datacontenttype: in binary mode the Content-Type header carries it")
    return _event(attrs, content_type, body, where="header ce-")


def _structured(body: bytes) -> CloudEvent:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object (one CloudEvent), got {type(doc).__name__}")
    content_type = doc.pop("datacontenttype", None)
    if content_type is not None and not isinstance(content_type, str):
        raise BadRequest("datacontenttype: expected a string")
    has_data, data = "data" in doc, doc.pop("data", None)
    data_b64 = doc.pop("data_base64", None)
    if has_data and data_b64 is not None:
        raise BadRequest("data and data_base64: give one of them, not both")
    body_out = b""
    if data_b64 is not None:
        if not isinstance(data_b64, str):
            raise BadRequest("data_base64: expected a base64 string")
        try:
            body_out = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("data_base64: not valid base64") from None
    elif has_data and data is not None:
        if isinstance(data, str) and content_type and not _is_json(content_type):
            body_out = data.encode()
        else:
            body_out = msgspec.json.encode(data)
            content_type = content_type or "application/json"
    attrs: dict[str, str] = {}
    for name, value in doc.items():
        if isinstance(value, bool):
            attrs[name] = "true" if value else "false"
        elif isinstance(value, str | int) and not isinstance(value, bool):
            attrs[name] = str(value)
        else:
            raise BadRequest(f"{name}: expected a string, number or boolean attribute value")
    return _event(attrs, content_type, body_out, where="")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def _event(attrs: dict[str, str], content_type: str | None, data: bytes, where: str) -> CloudEvent:
    missing = [a for a in _CORE if not attrs.get(a)]
    if missing:
        raise BadRequest("missing required attribute(s): " + ", ".join(where + m for m in missing))
    if attrs["specversion"] != "1.0":
        raise BadRequest(f"{where}specversion: only 1.0 is supported, got {attrs['specversion']!r}")
    for name, value in attrs.items():
        if not _ATTR_NAME.match(name):
            raise BadRequest(
                f"{where}{name}: attribute names are lower-case letters and digits only"
            )
        if _CONTROL.search(value):
            raise BadRequest(f"{where}{name}: control characters are not allowed")
        if name in _RESERVED_EXTENSIONS:
            raise BadRequest(f"{where}{name}: reserved for the events vebus reads from vCenter")
    if content_type is not None and _CONTROL.search(content_type):
        raise BadRequest("content type: control characters are not allowed")
    if "time" in attrs:
        try:
            dt.datetime.fromisoformat(attrs["time"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{where}time: expected an RFC 3339 timestamp") from None
    ext = {k: v for k, v in attrs.items() if k not in _CORE and k not in _OPTIONAL}
    return CloudEvent(
        id=attrs["id"],
        source=attrs["source"],
        type=attrs["type"],
        specversion="1.0",
        time=attrs.get("time"),
        subject=attrs.get("subject"),
        dataschema=attrs.get("dataschema"),
        datacontenttype=content_type,
        extensions=ext,
        data=data,
    )


class WebhookSource:
    """The HTTP endpoint; `start()` listens, `stop()` finishes requests in flight."""

    def __init__(self, cfg: WebhookSourceConfig, js: JetStreamContext, max_payload: int) -> None:
        self.cfg = cfg
        self.js = js
        #: the whole NATS message (headers and body) stays this far under max_payload
        self.limit = max_payload - PAYLOAD_MARGIN
        self.max_body = min(cfg.max_body, self.limit) if cfg.max_body else self.limit
        self.port = 0
        self.counts = {"published": 0, "duplicates": 0, "refused": 0}
        self._runner: web.AppRunner | None = None

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
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        auth = [
            m
            for m, on in (("bearer", self.cfg.bearer_token), ("basic", self.cfg.username))
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
        if self.cfg.anonymous and self.cfg.bearer_token is None and self.cfg.username is None:
            return True
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
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = parse_request(headers, body)
        except BadRequest as e:
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
