"""Publishing to JetStream: each publish waits for the stream's acknowledgement.

Inside a service, each publish is observed here (vebus.bus.observe: the runtime's telemetry
starts a PRODUCER span whose `traceparent` goes out in the message's headers, and counts
what was stored or refused).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

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

from vebus import names
from vebus.bus import acks, natsapi, observe
from vebus.errors import MessageTooLargeError, PublishError, RouteFullError, StorageFullError

__all__ = [
    "OutgoingMessage",
    "check_size",
    "describe",
    "message_size",
    "observed_write",
    "publish",
    "publish_all",
    "refused",
]

T = TypeVar("T")

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


#: below this distance from max_payload a body cannot be pushed over it by its headers
#: (vebus headers are a few hundred bytes; a dead letter's error text is cut at 1,000)
_HEADER_ROOM = 64 * 1024


def message_size(body: bytes, headers: Mapping[str, str]) -> int:
    """Bytes the server counts against max_payload: NATS/1.0 header block plus body."""
    # "NATS/1.0\r\n", "<k>: <v>\r\n" per header, "\r\n"
    return len(body) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())


def check_size(js: JetStreamContext, subject: str, body: bytes, headers: Mapping[str, str]) -> None:
    """MessageTooLargeError if the message would exceed the server's max_payload."""
    limit = natsapi.max_payload(js)
    if len(body) + _HEADER_ROOM < limit:
        return  # the hot path: no header walk for an ordinary event
    size = message_size(body, headers)
    if size > limit:
        raise MessageTooLargeError(
            f"message to {subject} is {size} bytes with its headers, over the server's "
            f"max_payload of {limit}"
        )


class OutgoingMessage:
    """A message to publish: subject, body and headers (Nats-Msg-Id among them).

    `observation` is the observed publish of a publisher that waits for the ack later
    (async publishes); it ends with the ack.
    """

    __slots__ = ("body", "headers", "observation", "subject")

    def __init__(self, subject: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.subject = subject
        self.body = body
        self.headers = dict(headers)
        self.observation: observe.PublishObservation | None = None


async def publish(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = 5.0,
) -> PubAck:
    """Publish and wait for the stream's ack; PublishError if JetStream never acknowledges."""
    out = dict(headers)
    observer = observe.current()
    if observer is None:
        return await _publish(js, subject, body, out, timeout)
    observation = observer.publishing(subject, out, len(body))
    try:
        ack = await _publish(js, subject, body, out, timeout)
    except (PublishError, RouteFullError, MessageTooLargeError) as e:
        observation.failed(e, _failure_label(e))
        raise
    except BaseException:
        observation.abandoned()
        raise
    observation.stored()
    return ack


def _failure_label(e: Exception) -> str:
    if isinstance(e, RouteFullError):
        return "route_full"
    return "too_large" if isinstance(e, MessageTooLargeError) else "error"


async def _publish(
    js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str], timeout: float
) -> PubAck:
    check_size(js, subject, body, headers)
    try:
        try:  # the first attempt without the retry machinery: it is the hot path
            return await acks.publish(natsapi.connection(js), subject, body, headers, timeout)
        except _RETRYABLE as e:
            failed: BaseException | None = e
        async for attempt in AsyncRetrying(**PUBLISH_RETRY):  # type: ignore[arg-type]
            with attempt:
                if failed is not None:  # the policy counts, waits and logs that attempt too
                    first, failed = failed, None
                    raise first
                return await js.publish(subject, body, timeout=timeout, headers=headers)
    except APIError as e:
        raise refused(subject, e) from e
    except (TimeoutError, nats.errors.Error) as e:
        raise PublishError(f"publish to {subject} was not acknowledged: {e!r}") from e
    raise AssertionError("unreachable")


def refused(subject: str, e: APIError) -> PublishError | RouteFullError:
    """The error for a publish JetStream answered with `e`: a full route (RouteFullError,
    dead-lettered by the filter), no storage left (StorageFullError, retried until space
    is freed), or another refusal (PublishError)."""
    # nats-py's own subclasses (KeyWrongLastSequenceError, ...) may lack the attributes
    code = getattr(e, "err_code", None)
    description = str(getattr(e, "description", None) or "")
    lowered = description.lower()
    stream = names.stream_name_of(subject)
    if code == names.JS_ERR_MAX_MSGS_PER_SUBJECT and names.JS_MAX_PER_SUBJECT_TEXT in lowered:
        return RouteFullError(f"{subject} is full: {description}")
    if code in names.JS_STORAGE_ERRORS or (
        code == names.JS_ERR_MAX_MSGS_PER_SUBJECT
        and any(t in lowered for t in names.JS_NO_SPACE_TEXTS)
    ):
        return StorageFullError(
            f"JetStream: insufficient storage for {stream}: publish to {subject} refused "
            f"({description or code}); free space or raise JetStream's max_file_store",
            stream=stream,
        )
    return PublishError(f"publish to {subject} was refused: {description}")


def describe(subject: str, error: BaseException) -> str:
    """`error` of a write to `subject` as a person reads it: JetStream's refusals by what
    they mean (nats-py's own text for them is often empty), anything else as its repr."""
    if isinstance(error, APIError):
        return str(refused(subject, error))
    return repr(error)


async def observed_write(subject: str, write: Awaitable[T]) -> T:
    """Await `write`, a publish underneath (a KV create, update or put of `subject`:
    names.kv_subject), observed like `publish`: a refusal for want of storage is reported
    to the service (its /readyz says so), a success clears it. The write's own errors are
    raised unchanged, so its caller handles them as before (a compare-and-set conflict is
    not a failure of JetStream)."""
    observer = observe.current()
    if observer is None:
        return await write
    observation = observer.publishing(subject, {}, 0)
    try:
        result = await write
    except APIError as e:
        error = refused(subject, e)
        if isinstance(error, StorageFullError):
            observation.failed(error, "error")
        else:
            observation.abandoned()
        raise
    except BaseException:
        observation.abandoned()
        raise
    observation.stored()
    return result


async def publish_all(
    js: JetStreamContext, messages: Sequence[OutgoingMessage], *, timeout: float = 5.0
) -> list[PubAck]:
    """Publish a batch and wait for every ack, in order (PublishError if any fails): async
    publishes with a window of acks outstanding (vebus.bus.pubwindow), no task or round
    trip per message."""
    from vebus.bus.pubwindow import PublishWindow  # it builds on this module

    return await PublishWindow(js, ack_timeout=timeout).publish_acks(messages)
