"""Publishing to JetStream: each publish waits for the stream's acknowledgement."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from vebus.errors import PublishError, RouteFullError

__all__ = ["OutgoingMessage", "publish", "publish_all"]

log = logging.getLogger(__name__)

#: what a publish is retried on: JetStream briefly without a leader, a slow ack
_RETRYABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError)

#: in-process retry of one publish: JetStream briefly without a leader, a slow ack
PUBLISH_RETRY = {
    "stop": stop_after_attempt(5),
    "wait": wait_exponential_jitter(multiplier=0.2, max=2.0),
    "retry": retry_if_exception_type(_RETRYABLE),
    "before_sleep": before_sleep_log(log, logging.WARNING),
    "reraise": True,
}


#: JetStream's error code for a subject at max_msgs_per_subject with discard-new-per-subject
JS_ERR_MAX_MSGS_PER_SUBJECT = 10077


class OutgoingMessage:
    """A message to publish: subject, body and headers (Nats-Msg-Id among them)."""

    __slots__ = ("body", "headers", "subject")

    def __init__(self, subject: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.subject = subject
        self.body = body
        self.headers = dict(headers)


async def publish(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = 5.0,
) -> PubAck:
    """Publish and wait for the stream's ack; PublishError if JetStream never acknowledges."""
    try:
        try:  # the first attempt without the retry machinery: it is the hot path
            return await js.publish(subject, body, timeout=timeout, headers=dict(headers))
        except _RETRYABLE as e:
            failed: BaseException | None = e
        async for attempt in AsyncRetrying(**PUBLISH_RETRY):  # type: ignore[arg-type]
            with attempt:
                if failed is not None:  # the policy counts, waits and logs that attempt too
                    first, failed = failed, None
                    raise first
                return await js.publish(subject, body, timeout=timeout, headers=dict(headers))
    except APIError as e:
        if e.err_code == JS_ERR_MAX_MSGS_PER_SUBJECT:
            raise RouteFullError(f"{subject} is full: {e.description}") from e
        raise PublishError(f"publish to {subject} was refused: {e.description}") from e
    except (TimeoutError, nats.errors.Error) as e:
        raise PublishError(f"publish to {subject} was not acknowledged: {e!r}") from e
    raise AssertionError("unreachable")


async def publish_all(
    js: JetStreamContext, messages: Sequence[OutgoingMessage], *, timeout: float = 5.0
) -> list[PubAck]:
    """Publish a batch concurrently and wait for every ack (PublishError if any fails)."""
    return list(
        await asyncio.gather(
            *(publish(js, m.subject, m.body, m.headers, timeout=timeout) for m in messages)
        )
    )
