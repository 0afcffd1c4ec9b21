"""The webhook sink: CloudEvents over HTTP POST (a VEBA function, a Knative service, ...).

Binary mode by default (attributes in `ce-` headers, data as the body), structured mode on
request. A 2xx is success; 429 and 5xx are retried (honouring `Retry-After`), as are
timeouts and connection failures; any other answer is permanent. Redirects are not
followed: a POST that is redirected is reported, so that the route's URL gets fixed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import math
from collections.abc import Mapping

import aiohttp

from vebus import config
from vebus.cloudevent import TRACEPARENT, CloudEvent
from vebus.dlq import ErrorCode
from vebus_dispatcher.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from vebus_dispatcher.sinks import encoding

__all__ = ["WebhookSink", "parse_retry_after", "status_error"]

#: trace context headers passed from the NATS message to the HTTP request
TRACE_HEADERS = (TRACEPARENT, "tracestate")
#: how much of an error answer's body goes into the error message
DETAIL_CHARS = 200


class WebhookSink:
    """POSTs each event to `config.url` over one shared, keep-alive aiohttp session."""

    kind = "webhook"

    def __init__(self, sink: config.WebhookSink, session: aiohttp.ClientSession) -> None:
        self._sink = sink
        self._session = session

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        if self._sink.mode == "structured":
            ce_headers, body = encoding.structured(event)
        else:
            ce_headers, body = encoding.binary(event)
        out = dict(self._sink.headers)
        out.update(ce_headers)
        for name in TRACE_HEADERS:
            if value := headers.get(name):
                out[name] = value
        url = self._sink.url
        try:
            async with self._session.post(
                url, data=body, headers=out, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    await _drain(resp)  # a fully read answer keeps the connection reusable
                    return
                raw = await resp.content.read(DETAIL_CHARS * 4)
                raise status_error(
                    url,
                    resp.status,
                    resp.reason or "",
                    raw.decode("utf-8", "replace")[:DETAIL_CHARS],
                    resp.headers.get("Retry-After"),
                )
        except aiohttp.ClientError as e:
            if isinstance(e, TimeoutError):
                raise RetryableDeliveryError(
                    f"{url}: timed out: {e!r}", code=ErrorCode.TIMEOUT
                ) from e
            raise RetryableDeliveryError(
                f"{url}: connection failed: {e}", code=ErrorCode.CONNECTION_FAILURE
            ) from e


async def _drain(resp: aiohttp.ClientResponse) -> None:
    # the sink said 2xx: the event is delivered whatever happens to the rest of the answer
    with contextlib.suppress(aiohttp.ClientError):
        await resp.read()


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
