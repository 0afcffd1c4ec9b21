"""The http sink: any request built from templates, for ServiceNow, Jira, CMDBs and the like.

`url` and `body` are templates (`body` is left out: the event's data as it is, and no body
for GET and DELETE); `headers` are fixed (with `${ENV}` secrets), `auth` as for webhooks.
The `traceparent` of the event is passed on. At-least-once: a 2xx is success; 429 and 5xx
are retried (honouring `Retry-After`), as are timeouts and connection failures; any other
answer is permanent, and so is a URL that does not render as an http(s) URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ErrorCode, PermanentDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.httpclient import Authenticator, new_session, redact, request
from vebus_dispatcher.sinks.templating import compile_field, compile_optional, render
from vebus_dispatcher.sinks.webhook import TRACE_HEADERS

__all__ = ["HttpSink"]


class HttpSink:
    """Sends `method url` with the rendered body for each event."""

    kind = "http"

    def __init__(self, sink: config.HttpSink, ctx: SinkContext) -> None:
        self._sink = sink
        self._url = compile_field(ctx.route.name, "url", sink.url)
        self._body = compile_optional(ctx.route.name, "body", sink.body)
        self._auth = Authenticator(sink.auth)
        self._session = new_session(ctx.route, ctx.user_agent, ctx.http)

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        url = render(self._url, event).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PermanentDeliveryError(
                f"event {event.id}: url rendered {redact(url)!r}, not an http(s) URL",
                code=ErrorCode.TEMPLATE_ERROR,
            )
        body: bytes | None
        if self._body is not None:
            body = render(self._body, event).encode()
        elif self._sink.method in ("GET", "DELETE"):
            body = None
        else:
            body = event.data
        out = {"Content-Type": self._sink.content_type} if body is not None else {}
        out.update(self._sink.headers)
        out.update(self._auth.headers(body))
        for name in TRACE_HEADERS:
            if value := headers.get(name):
                out[name] = value
        await request(self._session, self._sink.method, url, body=body, headers=out)

    async def close(self) -> None:
        await self._session.close()
