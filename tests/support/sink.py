"""Real servers the tests deliver to: a recording HTTP sink, and a fake of the SaaS APIs
(Slack, Teams, PagerDuty, ServiceNow) that checks each payload's shape as the service would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from vebus.local.embedded import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: the event loop's time when the request arrived
    at: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingSink:
    """Answers each request with `status` (or what `responder` returns) and records it.

    `delay` holds every answer back that long; `response_headers` go on every answer
    (e.g. Retry-After); `on_request` sees each request as it arrives (before the delay).
    """

    port: int = 0
    status: int = 200
    responder: Callable[[Received], int] | None = None
    delay: float = 0.0
    response_headers: dict[str, str] = field(default_factory=dict)
    on_request: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def arrivals(self) -> list[float]:
        return [r.at for r in self.received]

    async def start(self) -> RecordingSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Received(
            request.method,
            request.path,
            dict(request.headers),
            await request.read(),
            asyncio.get_running_loop().time(),
        )
        self.received.append(rec)
        if self.on_request is not None:
            self.on_request(rec)
        status = self.responder(rec) if self.responder else self.status
        if self.delay:
            await asyncio.sleep(self.delay)
        if 200 <= status < 300:
            self.accepted.append(rec)
        self._changed.set()
        return web.Response(
            status=status,
            text="ok" if status < 300 else "failing on purpose",
            headers=self.response_headers,
        )

    def accepted_ids(self) -> list[str]:
        return [r.headers.get("ce-id", "") for r in self.accepted]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until `predicate()` holds (checked on every request), or `timeout`."""
        return await _wait(self._changed, predicate, timeout)


async def _wait(changed: asyncio.Event, predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
    return True


# ---------------------------------------------------------------------- the SaaS fakes

PAGERDUTY_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, as PagerDuty's are
SERVICENOW_USER, SERVICENOW_PASSWORD = "vebus", "n0w-s3cret"


@dataclass
class SaasFake:
    """Slack, Teams, PagerDuty Events v2 and ServiceNow's Table API on one loopback port.

    Each endpoint refuses a payload of the wrong shape with the status and text its real
    service gives; what it accepts lands in `accepted[<service>]`.
    """

    port: int = 0
    accepted: dict[str, list[Any]] = field(
        default_factory=lambda: {"slack": [], "teams": [], "pagerduty": [], "servicenow": []}
    )
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> SaasFake:
        app = web.Application()
        app.router.add_post("/services/T000/B000/slack", self._slack)
        app.router.add_post("/workflows/teams", self._teams)
        app.router.add_post("/v2/enqueue", self._pagerduty)
        app.router.add_post("/api/now/table/{table}", self._servicenow)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        return await _wait(self._changed, predicate, timeout)

    def _refuse(self, service: str, status: int, text: str) -> web.Response:
        self.refused.append((service, status, text))
        self._changed.set()
        return web.Response(status=status, text=text)

    def _accept(self, service: str, doc: Any, response: web.Response) -> web.Response:
        self.accepted[service].append(doc)
        self._changed.set()
        return response

    @staticmethod
    async def _json(request: web.Request) -> Any:
        if not request.content_type.startswith("application/json"):
            return None
        try:
            return json.loads(await request.read())
        except ValueError:
            return None

    async def _slack(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        if not isinstance(doc, dict):
            return self._refuse("slack", 400, "invalid_payload")
        if not (isinstance(doc.get("text"), str) and doc["text"].strip()) and not doc.get("blocks"):
            return self._refuse("slack", 400, "no_text")
        return self._accept("slack", doc, web.Response(text="ok"))

    async def _teams(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        try:
            assert isinstance(doc, dict)
            assert doc["type"] == "message"
            (attachment,) = doc["attachments"]
            assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
            card = attachment["content"]
            assert card["type"] == "AdaptiveCard"
            assert isinstance(card["version"], str)
            assert card["body"], "an empty card"
            for block in card["body"]:
                assert block["type"] == "TextBlock"
                assert isinstance(block["text"], str)
        except (AssertionError, KeyError, TypeError, ValueError) as e:
            return self._refuse("teams", 400, f"Bad payload: {e!r}")
        return self._accept("teams", doc, web.Response(status=202))

    async def _pagerduty(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        errors: list[str] = []
        if not isinstance(doc, dict):
            return self._refuse("pagerduty", 400, '{"status":"invalid event"}')
        if doc.get("routing_key") != PAGERDUTY_KEY:
            errors.append("'routing_key' is invalid")
        action = doc.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        key = doc.get("dedup_key")
        if action != "trigger" and not key:
            errors.append("'dedup_key' is required")
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= 255):
            errors.append("'dedup_key' is invalid")
        if action == "trigger":
            payload = doc.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing")
            else:
                summary = payload.get("summary")
                if not (isinstance(summary, str) and 0 < len(summary) <= 1024):
                    errors.append("'payload.summary' is invalid")
                if not payload.get("source"):
                    errors.append("'payload.source' is missing")
                if payload.get("severity") not in ("critical", "error", "warning", "info"):
                    errors.append("'payload.severity' is invalid")
                if "timestamp" in payload:
                    try:
                        dt.datetime.fromisoformat(payload["timestamp"][:26] + "+00:00")
                    except ValueError:
                        errors.append("'payload.timestamp' is invalid")
        if errors:
            body = {"status": "invalid event", "message": "Event object is invalid"}
            return self._refuse("pagerduty", 400, json.dumps({**body, "errors": errors}))
        answer = {"status": "success", "message": "Event processed", "dedup_key": key}
        return self._accept("pagerduty", doc, web.json_response(answer, status=202))

    async def _servicenow(self, request: web.Request) -> web.Response:
        want = "Basic " + base64.b64encode(
            f"{SERVICENOW_USER}:{SERVICENOW_PASSWORD}".encode()
        ).decode("ascii")
        if request.headers.get("Authorization") != want:
            return self._refuse("servicenow", 401, '{"error":{"message":"User Not Authenticated"}}')
        doc = await self._json(request)
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            return self._refuse("servicenow", 400, '{"error":{"message":"Invalid JSON"}}')
        if request.match_info["table"] != "incident" or not doc.get("short_description"):
            return self._refuse("servicenow", 400, '{"error":{"message":"Missing field"}}')
        record = {**doc, "sys_id": f"{len(self.accepted['servicenow']):032x}"}
        return self._accept("servicenow", doc, web.json_response({"result": record}, status=201))


# ---------------------------------------------------------------------- certificates


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `host` (an IP address) and its key, as PEM files in `directory`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
