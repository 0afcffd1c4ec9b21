"""The webhook sink: CloudEvents over HTTP POST (a VEBA function, a Knative service, ...).

Binary mode by default (attributes in `ce-` headers, data as the body), structured mode on
request, both written by the one HTTP binding (`vebus.bus.http`); extra headers; optional
auth: a bearer token, basic auth, or an HMAC-SHA256 signature of the body
(`X-Vebus-Signature-256: sha256=<hex>`). At-least-once: a 2xx is
success; 429 and 5xx are retried (honouring `Retry-After`), as are timeouts and connection
failures; any other answer is permanent. Redirects are not followed: a POST that is
redirected is reported, so that the route's URL gets fixed.
"""

from __future__ import annotations

from collections.abc import Mapping

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_binary, to_structured
from vebus.names import TRACEPARENT
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.httpclient import Authenticator, new_session, request

__all__ = ["TRACE_HEADERS", "WebhookSink"]

#: trace context headers passed from the NATS message to the HTTP request
TRACE_HEADERS = (TRACEPARENT, "tracestate")


class WebhookSink:
    """POSTs each event to `config.url` over the sink's own keep-alive session."""

    kind = "webhook"

    def __init__(self, sink: config.WebhookSink, ctx: SinkContext) -> None:
        self._sink = sink
        self._session = new_session(ctx.route, ctx.user_agent, ctx.http)
        self._auth = Authenticator(sink.auth)

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        encode = to_structured if self._sink.mode == "structured" else to_binary
        ce_headers, body = encode(event)
        out = dict(self._sink.headers)
        out.update(ce_headers)
        out.update(self._auth.headers(body))
        for name in TRACE_HEADERS:
            if value := headers.get(name):
                out[name] = value
        await request(self._session, "POST", self._sink.url, body=body, headers=out)

    async def close(self) -> None:
        await self._session.close()
