"""Dead letters: what could not be delivered, why, and how to send it again.

A dead letter is the original message (its CloudEvent headers and body, unchanged) stored
on `vebus.dlq.<route>` in VEBUS_DLQ with `vebus-dlq-*` headers that say what happened.
Its id is its VEBUS_DLQ stream sequence. Replaying publishes the original event to a route
again with a new Nats-Msg-Id (the CloudEvent id is kept) and then deletes the dead letter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from enum import StrEnum

import msgspec
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from vebus import subjects
from vebus.cloudevent import CE_PREFIX, MSG_ID, CloudEvent, from_headers
from vebus.errors import InvalidEventError, VebusError
from vebus.publish import publish

__all__ = [
    "DeadLetter",
    "DeadLetterNotFoundError",
    "ErrorCode",
    "Exhausted",
    "delete_dead_letter",
    "get_dead_letter",
    "iter_dead_letters",
    "publish_dead_letter",
    "replay_dead_letter",
]

H = "vebus-dlq-"
H_ROUTE, H_SINK, H_CODE, H_ERROR = H + "route", H + "sink", H + "code", H + "error"
H_STATUS, H_ATTEMPTS, H_EXHAUSTED = H + "status", H + "attempts", H + "exhausted"
H_FIRST, H_LAST, H_MSG_ID = H + "first-attempt", H + "last-attempt", H + "msg-id"
REPLAY_EXTENSION = "vebusreplay"
#: JetStream's error code for a message delete that failed, e.g. "no message found"
_MSG_DELETE_FAILED = 10057


class ErrorCode(StrEnum):
    """Why an event became a dead letter."""

    CONNECTION_FAILURE = "CONNECTION_FAILURE"
    TIMEOUT = "TIMEOUT"
    HTTP_4XX = "HTTP_4XX"
    HTTP_5XX = "HTTP_5XX"
    THROTTLED = "THROTTLED"
    INVALID_EVENT = "INVALID_EVENT"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    SINK_ERROR = "SINK_ERROR"
    POISON = "POISON"
    ROUTE_FULL = "ROUTE_FULL"


class Exhausted(StrEnum):
    """Which condition ended the attempts."""

    MAX_ATTEMPTS = "max_attempts"
    MAX_AGE = "max_age"
    NOT_RETRYABLE = "not_retryable"
    MAX_DELIVERIES = "max_deliveries"


class DeadLetterNotFoundError(VebusError):
    """No dead letter has that id."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One stored dead letter."""

    id: int
    route: str
    sink: str
    code: str
    error: str
    status: int | None
    attempts: int
    exhausted: str
    first_attempt: str | None
    last_attempt: str | None
    stored_at: str | None
    #: the original Nats-Msg-Id
    msg_id: str | None
    #: the original message's headers (ce-*, content-type, traceparent, ...)
    headers: dict[str, str]
    body: bytes

    def event(self) -> CloudEvent | None:
        """The original CloudEvent, or None when it was not a valid one."""
        try:
            return from_headers(self.headers, self.body)
        except InvalidEventError:
            return None

    def summary(self) -> dict[str, object]:
        """The fields a person reads, for tables and --json."""
        ev = self.event()
        return {
            "id": self.id,
            "route": self.route,
            "sink": self.sink,
            "code": self.code,
            "status": self.status,
            "attempts": self.attempts,
            "exhausted": self.exhausted,
            "error": self.error,
            "first_attempt": self.first_attempt,
            "last_attempt": self.last_attempt,
            "stored_at": self.stored_at,
            "event_id": ev.id if ev else None,
            "event_type": ev.type if ev else None,
            "event_source": ev.source if ev else None,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _iso(ts: float | dt.datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, dt.datetime):
        return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


async def publish_dead_letter(
    js: JetStreamContext,
    *,
    route: str,
    sink: str,
    code: ErrorCode,
    error: str,
    headers: Mapping[str, str] | None,
    body: bytes,
    attempts: int,
    exhausted: Exhausted,
    status: int | None = None,
    first_attempt: float | dt.datetime | None = None,
    last_attempt: float | dt.datetime | None = None,
) -> None:
    """Store a dead letter and wait for JetStream's ack (PublishError if it does not come).

    The Msg-Id derives from the original one, so storing the same failure twice within
    the duplicate window (a crash between this publish and the original's ack) makes one.
    """
    original = dict(headers or {})
    msg_id = original.pop(MSG_ID, None)
    out = {k: v for k, v in original.items() if not k.lower().startswith(H)}
    out.update(
        {
            H_ROUTE: route,
            H_SINK: sink,
            H_CODE: str(code),
            H_ERROR: " ".join(error.split())[:1000],
            H_ATTEMPTS: str(attempts),
            H_EXHAUSTED: str(exhausted),
            H_LAST: _iso(last_attempt) or _now(),
        }
    )
    if status is not None:
        out[H_STATUS] = str(status)
    if first := _iso(first_attempt):
        out[H_FIRST] = first
    if msg_id:
        out[H_MSG_ID] = msg_id
        out[MSG_ID] = f"dlq:{route}:{msg_id}"
    await publish(js, subjects.dlq_subject(route), body, out)


def _decode(raw: RawStreamMsg) -> DeadLetter:
    headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith("Nats-")}
    dl = {k: headers.pop(k) for k in list(headers) if k.lower().startswith(H)}
    status = dl.get(H_STATUS)
    stored = raw.headers.get("Nats-Time-Stamp") if raw.headers else None
    return DeadLetter(
        id=int(raw.seq or 0),
        route=dl.get(H_ROUTE, (raw.subject or "").removeprefix("vebus.dlq.")),
        sink=dl.get(H_SINK, ""),
        code=dl.get(H_CODE, ""),
        error=dl.get(H_ERROR, ""),
        status=int(status) if status and status.isdigit() else None,
        attempts=int(dl.get(H_ATTEMPTS, "0") or 0),
        exhausted=dl.get(H_EXHAUSTED, ""),
        first_attempt=dl.get(H_FIRST),
        last_attempt=dl.get(H_LAST),
        stored_at=stored or _iso(getattr(raw, "time", None)),
        msg_id=dl.get(H_MSG_ID),
        headers=headers,
        body=raw.data or b"",
    )


async def get_dead_letter(js: JetStreamContext, dead_letter_id: int) -> DeadLetter:
    """The dead letter with this id; DeadLetterNotFoundError if there is none."""
    try:
        raw = await js.get_msg(subjects.DLQ_STREAM, seq=dead_letter_id, direct=True)
    except NotFoundError:
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id}") from None
    return _decode(raw)


async def iter_dead_letters(
    js: JetStreamContext, *, route: str | None = None, code: str | None = None
) -> AsyncIterator[DeadLetter]:
    """Every stored dead letter, oldest first, optionally only one route's or one code's."""
    subject = subjects.dlq_subject(route) if route else subjects.DLQ_SUBJECTS
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                subjects.DLQ_STREAM, seq=seq, subject=subject, next=True, direct=True
            )
        except NotFoundError:
            return
        dl = _decode(raw)
        seq = dl.id + 1
        if code is None or dl.code == code:
            yield dl


async def delete_dead_letter(js: JetStreamContext, dead_letter_id: int) -> None:
    """Remove one dead letter (DeadLetterNotFoundError if it is not there)."""
    try:
        await js.delete_msg(subjects.DLQ_STREAM, dead_letter_id)
    except APIError as e:
        if not isinstance(e, NotFoundError) and e.err_code != _MSG_DELETE_FAILED:
            raise
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id}") from None


async def replay_dead_letter(
    js: JetStreamContext, dead_letter: DeadLetter, *, to_route: str | None = None
) -> str:
    """Send the original event to its route (or `to_route`) again, then delete the letter.

    The CloudEvent id is kept; the message gets a new Nats-Msg-Id so JetStream does not drop
    it as a duplicate (one per dead letter, so replaying the same letter twice within the
    duplicate window, e.g. again after a failed delete, stores it once), and the
    `vebusreplay` extension says when it was replayed. Returns the route it went to.
    """
    route = to_route or dead_letter.route
    if route == subjects.DLQ_INVALID_ROUTE:
        raise VebusError(
            f"dead letter {dead_letter.id} was never routed (invalid event); "
            "give --to-route to send it to a route"
        )
    headers = dict(dead_letter.headers)
    headers[CE_PREFIX + REPLAY_EXTENSION] = _now()
    base = dead_letter.msg_id or f"dlq-{dead_letter.id}"
    headers[MSG_ID] = f"{base}:replay:{dead_letter.id}"
    await publish(js, subjects.route_subject(route), dead_letter.body, headers)
    await delete_dead_letter(js, dead_letter.id)
    return route
