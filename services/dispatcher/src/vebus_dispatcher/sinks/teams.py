"""The teams sink: one Microsoft Teams message per event through an incoming webhook.

The message is an Adaptive Card (what Teams Workflows webhooks take, and what the older
Office 365 connector webhooks also accept): an optional bold title, then the route's text.
At-least-once: Teams answers 200 or 202 once it has the message; 429 and 5xx are retried,
other answers are permanent. The old connector webhooks answered some failures with 200
and an error text (`Webhook message delivery failed ...`); that is treated as a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ErrorCode, RetryableDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.httpclient import new_session, redact, request
from vebus_dispatcher.sinks.slack import message_text
from vebus_dispatcher.sinks.templating import compile_field, compile_optional, render

__all__ = ["TeamsSink", "adaptive_card"]

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
MAX_TEXT = 20_000
JSON = {"Content-Type": "application/json"}
_LEGACY_FAILURE = b"webhook message delivery failed"


class TeamsSink:
    """Posts an Adaptive Card with the rendered `title` and `text`."""

    kind = "teams"

    def __init__(self, sink: config.TeamsSink, ctx: SinkContext) -> None:
        self._url = sink.url
        self._text = compile_field(ctx.route.name, "text", sink.text)
        self._title = compile_optional(ctx.route.name, "title", sink.title)
        self._session = new_session(ctx.route, ctx.user_agent, ctx.http)

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        text = message_text(render(self._text, event), event, MAX_TEXT)
        title = render(self._title, event).strip() if self._title else None
        body = json.dumps(adaptive_card(text, title), ensure_ascii=False).encode()
        answer = await request(self._session, "POST", self._url, body=body, headers=JSON)
        if answer.body[:64].lower().startswith(_LEGACY_FAILURE):
            raise RetryableDeliveryError(
                f"{redact(self._url)} answered {answer.status} but reported: "
                + answer.body[:200].decode("utf-8", "replace"),
                code=ErrorCode.HTTP_5XX,
                status=answer.status,
            )

    async def close(self) -> None:
        await self._session.close()


def adaptive_card(text: str, title: str | None) -> dict[str, Any]:
    """A Teams message holding one Adaptive Card: the title in bold, then the text."""
    blocks: list[dict[str, Any]] = []
    if title:
        blocks.append({"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": True})
    blocks.append({"type": "TextBlock", "text": text, "wrap": True})
    card = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": "1.4", "body": blocks}
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": None, "content": card}],
    }
