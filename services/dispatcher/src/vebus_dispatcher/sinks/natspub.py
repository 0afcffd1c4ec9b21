"""The nats sink: republish each event to a subject, for consumers that want their own stream.

The event goes out in the CloudEvents NATS binding, as vebus carries it (`ce-` headers, data
as the body, `traceparent`), with the route message's Nats-Msg-Id so that a stream on the
subject drops redelivered duplicates. `subject` may be a template (`vsphere.{{ subject }}`).

Guarantees: when a JetStream stream stores the subject, the publish waits for the stream's
ack: at-least-once. When none does, the event is published as plain NATS and flushed:
at-most-once (nobody may be listening), unless `require_stream` makes that a retryable
failure. Which stream stores a subject is looked up and remembered for CACHE_SECONDS.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import nats.errors
import nats.js.errors

from vebus import config
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.errors import ErrorCode, PermanentDeliveryError, RetryableDeliveryError
from vebus.names import MSG_ID, TRACEPARENT
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.templating import compile_field, render

__all__ = ["CACHE_SECONDS", "NatsSink"]

#: how long the answer to "which stream stores this subject" is trusted
CACHE_SECONDS = 10.0
_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


class NatsSink:
    """Publishes each event to its subject on the dispatcher's own NATS connection."""

    kind = "nats"

    def __init__(self, sink: config.NatsSink, ctx: SinkContext) -> None:
        self._sink = sink
        self._nc = ctx.nc
        self._js = ctx.js
        self._timeout = float(ctx.route.delivery.timeout)
        self._subject = (
            compile_field(ctx.route.name, "subject", sink.subject)
            if "{{" in sink.subject or "{%" in sink.subject
            else None
        )
        self._streams: dict[str, tuple[str | None, float]] = {}

    def subject(self, event: CloudEvent) -> str:
        """The subject `event` goes to."""
        if self._subject is None:
            return self._sink.subject
        subject = render(self._subject, event).strip()
        if not _SUBJECT.match(subject) or subject == "vebus" or subject.startswith("vebus."):
            raise PermanentDeliveryError(
                f"event {event.id}: subject rendered {subject[:200]!r}: not a NATS subject "
                "without wildcards outside vebus.>",
                code=ErrorCode.TEMPLATE_ERROR,
            )
        return subject

    async def _stream_for(self, subject: str) -> str | None:
        now = time.monotonic()
        cached = self._streams.get(subject)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            return cached[0]
        try:
            stream: str | None = await self._js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            stream = None
        if len(self._streams) > 10_000:
            self._streams.clear()
        self._streams[subject] = (stream, now)
        return stream

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        subject = self.subject(event)
        extra = {MSG_ID: headers.get(MSG_ID) or f"{event.source}:{event.id}"}
        if trace := headers.get(TRACEPARENT):
            extra[TRACEPARENT] = trace
        out = to_headers(event, extra)
        try:
            stream = await self._stream_for(subject)
            if stream is None:
                if self._sink.require_stream:
                    raise RetryableDeliveryError(
                        f"no JetStream stream stores {subject} (require_stream is set)",
                        code=ErrorCode.SINK_ERROR,
                    )
                await self._nc.publish(subject, event.data, headers=out)
                await self._nc.flush(timeout=max(1, int(self._timeout)))
                return
            await self._js.publish(subject, event.data, timeout=self._timeout, headers=out)
        except nats.js.errors.NoStreamResponseError as e:
            self._streams.pop(subject, None)
            raise RetryableDeliveryError(
                f"{subject}: the stream that stored it is gone", code=ErrorCode.SINK_ERROR
            ) from e
        except nats.js.errors.APIError as e:
            raise RetryableDeliveryError(
                f"{subject}: JetStream refused the publish: {e.description}",
                code=ErrorCode.SINK_ERROR,
                status=e.code,
            ) from e
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise RetryableDeliveryError(
                f"{subject}: no publish ack within {self._timeout:g}s", code=ErrorCode.TIMEOUT
            ) from e
        except nats.errors.Error as e:
            raise RetryableDeliveryError(
                f"{subject}: publish failed: {e!r}", code=ErrorCode.CONNECTION_FAILURE
            ) from e

    async def close(self) -> None:
        """The NATS connection is the dispatcher's: nothing of its own to release."""
