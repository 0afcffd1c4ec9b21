"""The pagerduty sink: PagerDuty Events API v2 (`trigger`, `acknowledge`, `resolve`).

Each event becomes one Events API v2 event for the route's integration (`routing_key`).
`dedup_key` (a template, by default the CloudEvent's source and id) names the alert, so a
route that resolves must render the same key as the route that triggered it (e.g. from
the alarm and the object it is about). A trigger carries `summary`, `source`, `severity`
(templates), optional `component`/`group`/`class`, the event's time and its data as
`custom_details`. At-least-once: PagerDuty answers 202 once it has the event; 429 and 5xx
are retried, 400 (an invalid event) is permanent. A rendered severity that is not one of
critical/error/warning/info is a TEMPLATE_ERROR.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ErrorCode, InvalidEventError, PermanentDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.httpclient import new_session, request
from vebus_dispatcher.sinks.slack import message_text
from vebus_dispatcher.sinks.templating import compile_field, compile_optional, render

__all__ = ["PagerDutySink"]

#: PagerDuty's limits: the summary is cut, a longer dedup_key is refused
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
JSON = {"Content-Type": "application/json"}


class PagerDutySink:
    """Sends one Events API v2 event per CloudEvent."""

    kind = "pagerduty"

    def __init__(self, sink: config.PagerDutySink, ctx: SinkContext) -> None:
        name = ctx.route.name
        self._sink = sink
        self._dedup_key = compile_field(name, "dedup_key", sink.dedup_key)
        self._summary = compile_field(name, "summary", sink.summary)
        self._severity = compile_field(name, "severity", sink.severity)
        self._source = compile_field(name, "source", sink.source)
        self._optional = {
            "component": compile_optional(name, "component", sink.component),
            "group": compile_optional(name, "group", sink.group),
            "class": compile_optional(name, "class", sink.class_),
        }
        self._session = new_session(ctx.route, ctx.user_agent, ctx.http)

    def body(self, event: CloudEvent) -> dict[str, Any]:
        """The Events API v2 request body for `event`."""
        dedup_key = render(self._dedup_key, event).strip()
        if not dedup_key or len(dedup_key) > MAX_DEDUP_KEY:
            raise PermanentDeliveryError(
                f"event {event.id}: dedup_key must render 1 to {MAX_DEDUP_KEY} characters, "
                f"got {len(dedup_key)}",
                code=ErrorCode.TEMPLATE_ERROR,
            )
        doc: dict[str, Any] = {
            "routing_key": self._sink.routing_key,
            "event_action": self._sink.action,
            "dedup_key": dedup_key,
            "client": "vebus",
        }
        if self._sink.action != "trigger":
            return doc
        severity = render(self._severity, event).strip()
        if severity not in config.PAGERDUTY_SEVERITIES:
            raise PermanentDeliveryError(
                f"event {event.id}: severity rendered {severity!r}, expected one of "
                + ", ".join(config.PAGERDUTY_SEVERITIES),
                code=ErrorCode.TEMPLATE_ERROR,
            )
        payload: dict[str, Any] = {
            "summary": message_text(render(self._summary, event), event, MAX_SUMMARY),
            "source": render(self._source, event).strip() or event.source,
            "severity": severity,
        }
        if event.time:
            payload["timestamp"] = event.time
        for name, template in self._optional.items():
            if template is not None and (value := render(template, event).strip()):
                payload[name] = value
        try:
            payload["custom_details"] = event.json_data()
        except InvalidEventError:
            payload["custom_details"] = event.data.decode("utf-8", "replace")
        doc["payload"] = payload
        return doc

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        body = json.dumps(self.body(event), ensure_ascii=False).encode()
        await request(self._session, "POST", self._sink.url, body=body, headers=JSON)

    async def close(self) -> None:
        await self._session.close()
