"""The slack sink: one Slack incoming-webhook message per event, its text the route's template.

The message is `{"text": <text>}` POSTed as JSON to the webhook URL. At-least-once: Slack
answers 200 `ok` once the message is posted; 429 (rate limited, with `Retry-After`) and
5xx are retried, any other answer (`invalid_payload`, `no_text`, `channel_not_found`,
`action_prohibited`, ...) is permanent. An empty text would be refused: it is a
TEMPLATE_ERROR instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ErrorCode, PermanentDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.httpclient import new_session, request
from vebus_dispatcher.sinks.templating import compile_field, render

__all__ = ["SlackSink", "message_text"]

#: Slack truncates longer messages; keep the whole text within what it shows
MAX_TEXT = 40_000
JSON = {"Content-Type": "application/json"}


class SlackSink:
    """Posts the rendered `text` to the incoming webhook."""

    kind = "slack"

    def __init__(self, sink: config.SlackSink, ctx: SinkContext) -> None:
        self._url = sink.url
        self._text = compile_field(ctx.route.name, "text", sink.text)
        self._session = new_session(ctx.route, ctx.user_agent, ctx.http)

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        text = message_text(render(self._text, event), event, MAX_TEXT)
        body = json.dumps({"text": text}, ensure_ascii=False).encode()
        await request(self._session, "POST", self._url, body=body, headers=JSON)

    async def close(self) -> None:
        await self._session.close()


def message_text(text: str, event: CloudEvent, limit: int) -> str:
    """`text` stripped and cut to `limit` characters; TEMPLATE_ERROR if nothing is left."""
    text = text.strip()
    if not text:
        raise PermanentDeliveryError(
            f"event {event.id}: the message template rendered an empty text",
            code=ErrorCode.TEMPLATE_ERROR,
        )
    return text if len(text) <= limit else text[: limit - 1] + "…"
