"""Dead letters: what could not be delivered, why, and how to send it again.

A dead letter is the original message (its CloudEvent headers and body, unchanged) stored
on `vebus.dlq.<route>` in VEBUS_DLQ with `vebus-dlq-*` headers that say what happened
(route, sink, code, error, HTTP status, attempts, exhausted condition, first and last
attempt). Its id is its VEBUS_DLQ stream sequence.

Replaying publishes the original event to a route again, waits for JetStream's ack, and
only then deletes the dead letter. The replayed message keeps the CloudEvent id, gains the
`vebusreplay` extension (the time of the replay) and gets the Nats-Msg-Id
`<original Msg-Id>:replay:<dead-letter id>`: one per dead letter, so a replay repeated after
a crash between the publish and the delete is dropped by JetStream as a duplicate (within
the stream's duplicate window) and the dead letter is then deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from vebus import names
from vebus.bus.cloudevent import CloudEvent, from_headers
from vebus.bus.http import to_json
from vebus.bus.publish import publish
from vebus.errors import (
    DeadLetterNotFoundError,
    ErrorCode,
    Exhausted,
    InvalidEventError,
    MessageTooLargeError,
    VebusError,
)
from vebus.names import MSG_ID
from vebus.timespec import format_time

__all__ = [
    "DeadLetter",
    "Pacer",
    "ReplayOutcome",
    "Replayed",
    "Selection",
    "decode_detail",
    "delete_dead_letter",
    "encode_detail",
    "get_dead_letter",
    "iter_dead_letters",
    "publish_dead_letter",
    "replay_dead_letter",
    "replay_msg_id",
    "replay_selection",
]

_json = msgspec.json.Decoder()
#: what separates an original Msg-Id from the dead letter it was replayed from
REPLAY_MARK = ":replay:"


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


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
    #: the event's size in bytes when its body was too large to keep with the letter
    body_omitted: int | None = None
    #: several lines that explain the error (a function's traceback, its output's tail)
    error_detail: str | None = None

    def event(self) -> CloudEvent | None:
        """The original CloudEvent, or None when it was not a valid one."""
        try:
            return from_headers(self.headers, self.body)
        except InvalidEventError:
            return None

    @property
    def stored(self) -> dt.datetime | None:
        """When VEBUS_DLQ stored it."""
        return _parse_time(self.stored_at)

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
            "body_omitted": self.body_omitted,
        }

    def data(self) -> tuple[str, Any]:
        """The body as ("json", value), ("text", str) or ("base64", str)."""
        if not self.body:
            return "text", ""
        try:
            return "json", json.loads(self.body)
        except ValueError:
            pass
        try:
            return "text", self.body.decode("utf-8")
        except UnicodeDecodeError:
            return "base64", base64.b64encode(self.body).decode("ascii")

    def detail(self) -> dict[str, Any]:
        """Everything: the summary, the Msg-Id, the event as a structured CloudEvent (what
        `vebus routes test --event` takes), the headers and the data."""
        ev = self.event()
        kind, data = self.data()
        out: dict[str, Any] = dict(self.summary())
        out["msg_id"] = self.msg_id
        if self.error_detail is not None:
            out["error_detail"] = self.error_detail
        out["event"] = _json.decode(to_json(ev)) if ev else None
        out["headers"] = dict(self.headers)
        out["data" if kind != "base64" else "data_base64"] = data
        return out


class Selection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which dead letters an operation applies to: every condition given must hold.

    `ids` picks dead letters by id; `route` and `code` match exactly; `since` (inclusive)
    and `until` (exclusive) bound the time VEBUS_DLQ stored them. An empty Selection
    matches every dead letter.
    """

    ids: list[int] | None = None
    route: str | None = None
    code: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def is_empty(self) -> bool:
        """True when it selects everything."""
        return not (self.ids or self.route or self.code or self.since or self.until)

    def matches(self, dl: DeadLetter) -> bool:
        """Whether `dl` is selected."""
        if self.ids is not None and dl.id not in self.ids:
            return False
        if self.route is not None and dl.route != names.token(self.route):
            return False
        if self.code is not None and dl.code != self.code.upper():
            return False
        if self.since is not None or self.until is not None:
            stored = dl.stored
            if stored is None:
                return False
            if self.since is not None and stored < self.since:
                return False
            if self.until is not None and stored >= self.until:
                return False
        return True

    def describe(self) -> str:
        """`route r1, code HTTP_5XX, stored since ...` for messages; "every dead letter"."""
        parts = []
        if self.ids is not None:
            parts.append("id " + ", ".join(map(str, self.ids)))
        if self.route:
            parts.append(f"route {self.route}")
        if self.code:
            parts.append(f"code {self.code.upper()}")
        if self.since:
            parts.append(f"stored since {format_time(self.since)}")
        if self.until:
            parts.append(f"stored before {format_time(self.until)}")
        return "; ".join(parts) if parts else "every dead letter"


def _now() -> str:
    return format_time(dt.datetime.now(dt.UTC))


def _iso(ts: float | dt.datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, dt.datetime):
        return format_time(ts)
    return format_time(dt.datetime.fromtimestamp(ts, dt.UTC))


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
    detail: str | None = None,
) -> None:
    """Store a dead letter and wait for JetStream's ack (PublishError if it does not come).

    `detail` (several lines, e.g. a function's traceback) is kept JSON-encoded in one
    header, its last DETAIL_MAX characters.

    The Msg-Id derives from the original one, so storing the same failure twice within
    the duplicate window (a crash between this publish and the original's ack) makes one.
    """
    original = dict(headers or {})
    msg_id = original.pop(MSG_ID, None)
    out = {k: v for k, v in original.items() if not k.lower().startswith(names.DLQ_HEADER_PREFIX)}
    out.update(
        {
            names.H_DLQ_ROUTE: route,
            names.H_DLQ_SINK: sink,
            names.H_DLQ_CODE: str(code),
            names.H_DLQ_ERROR: " ".join(error.split())[:1000],
            names.H_DLQ_ATTEMPTS: str(attempts),
            names.H_DLQ_EXHAUSTED: str(exhausted),
            names.H_DLQ_LAST: _iso(last_attempt) or _now(),
        }
    )
    if status is not None:
        out[names.H_DLQ_STATUS] = str(status)
    if detail:
        out[names.H_DLQ_DETAIL] = encode_detail(detail)
    if first := _iso(first_attempt):
        out[names.H_DLQ_FIRST] = first
    if msg_id:
        out[names.H_DLQ_MSG_ID] = msg_id
        out[MSG_ID] = f"dlq:{route}:{msg_id}"
    try:
        await publish(js, names.dlq_subject(route), body, out)
    except MessageTooLargeError:
        # the letter would be larger than the event that was too large: keep the record
        # (headers, reason) without the body rather than lose the failure
        out[names.H_DLQ_OMITTED] = str(len(body))
        await publish(js, names.dlq_subject(route), b"", out)


#: the most characters of a dead letter's detail that are kept (its end: a traceback's
#: last frames and the exception, the last lines of a function's output)
DETAIL_MAX = 8000


def encode_detail(detail: str) -> str:
    """A multi-line text as one header value: its last DETAIL_MAX characters, JSON-encoded
    (ASCII: newlines and non-ASCII characters escaped)."""
    text = detail if len(detail) <= DETAIL_MAX else "..." + detail[-DETAIL_MAX:]
    return json.dumps(text)


def decode_detail(value: str | None) -> str | None:
    """The text `encode_detail` wrote (a value that is not JSON is taken as it is)."""
    if not value:
        return None
    try:
        text = json.loads(value)
    except ValueError:
        return value
    return text if isinstance(text, str) else value


def _decode(raw: RawStreamMsg) -> DeadLetter:
    headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith("Nats-")}
    dl = {k: headers.pop(k) for k in list(headers) if k.lower().startswith(names.DLQ_HEADER_PREFIX)}
    status = dl.get(names.H_DLQ_STATUS)
    omitted = dl.get(names.H_DLQ_OMITTED, "")
    stored = raw.headers.get("Nats-Time-Stamp") if raw.headers else None
    return DeadLetter(
        id=int(raw.seq or 0),
        route=dl.get(names.H_DLQ_ROUTE, names.route_of_dlq_subject(raw.subject or "")),
        sink=dl.get(names.H_DLQ_SINK, ""),
        code=dl.get(names.H_DLQ_CODE, ""),
        error=dl.get(names.H_DLQ_ERROR, ""),
        status=int(status) if status and status.isdigit() else None,
        attempts=int(dl.get(names.H_DLQ_ATTEMPTS, "0") or 0),
        exhausted=dl.get(names.H_DLQ_EXHAUSTED, ""),
        first_attempt=dl.get(names.H_DLQ_FIRST),
        last_attempt=dl.get(names.H_DLQ_LAST),
        stored_at=stored or _iso(getattr(raw, "time", None)),
        msg_id=dl.get(names.H_DLQ_MSG_ID),
        headers=headers,
        body=raw.data or b"",
        body_omitted=int(omitted) if omitted.isdigit() else None,
        error_detail=decode_detail(dl.get(names.H_DLQ_DETAIL)),
    )


async def get_dead_letter(js: JetStreamContext, dead_letter_id: int) -> DeadLetter:
    """The dead letter with this id; DeadLetterNotFoundError if there is none."""
    try:
        raw = await js.get_msg(names.DLQ_STREAM, seq=dead_letter_id, direct=True)
    except NotFoundError:
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id}") from None
    return _decode(raw)


async def iter_dead_letters(
    js: JetStreamContext,
    *,
    route: str | None = None,
    code: str | None = None,
    selection: Selection | None = None,
    after: int = 0,
    upto: int | None = None,
) -> AsyncIterator[DeadLetter]:
    """Stored dead letters, oldest first: those `selection` (and `route`, `code`) pick,
    with an id above `after` and, if given, at most `upto`."""
    sel = selection or Selection()
    if route is not None or code is not None:
        sel = msgspec.structs.replace(sel, route=route or sel.route, code=code or sel.code)
    if sel.ids is not None:
        for ident in sorted(set(sel.ids)):
            if ident <= after or (upto is not None and ident > upto):
                continue
            try:
                dl = await get_dead_letter(js, ident)
            except DeadLetterNotFoundError:
                continue
            if sel.matches(dl):
                yield dl
        return
    subject = names.dlq_subject(sel.route) if sel.route else names.DLQ_SUBJECTS
    seq = after + 1
    while upto is None or seq <= upto:
        try:
            raw = await js.get_msg(
                names.DLQ_STREAM, seq=seq, subject=subject, next=True, direct=True
            )
        except NotFoundError:
            return
        dl = _decode(raw)
        if upto is not None and dl.id > upto:
            return
        seq = dl.id + 1
        if sel.matches(dl):
            yield dl


async def delete_dead_letter(js: JetStreamContext, dead_letter_id: int) -> None:
    """Remove one dead letter (DeadLetterNotFoundError if it is not there)."""
    try:
        await js.delete_msg(names.DLQ_STREAM, dead_letter_id)
    except APIError as e:
        if not isinstance(e, NotFoundError) and e.err_code != names.JS_ERR_MSG_DELETE_FAILED:
            raise
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id}") from None


def replay_msg_id(dead_letter: DeadLetter) -> str:
    """`<original Msg-Id>:replay:<dead-letter id>`; a letter that was itself replayed
    before keeps the original part only."""
    base = (dead_letter.msg_id or f"dlq-{dead_letter.id}").split(REPLAY_MARK)[0]
    return f"{base}{REPLAY_MARK}{dead_letter.id}"


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """What replaying one dead letter did."""

    id: int
    route: str
    msg_id: str
    #: JetStream had the message already (a repeat of a replay that was interrupted)
    duplicate: bool


async def replay_dead_letter(
    js: JetStreamContext, dead_letter: DeadLetter, *, to_route: str | None = None
) -> Replayed:
    """Send the original event to its route (or `to_route`) again, then delete the letter.

    The CloudEvent id is kept; the message gets a new Nats-Msg-Id (`replay_msg_id`) so
    JetStream does not drop it as a duplicate of the original, and the `vebusreplay`
    extension says when it was replayed. The dead letter is deleted only after JetStream
    acknowledged the replayed message. DeadLetterNotFoundError if someone else deleted it
    meanwhile (the replayed message then is a duplicate within the duplicate window).
    """
    route = to_route or dead_letter.route
    if dead_letter.body_omitted is not None:
        raise VebusError(
            f"dead letter {dead_letter.id} does not hold its event's body: the event "
            f"({dead_letter.body_omitted} bytes) was larger than NATS max_payload allows; "
            "see its error for where the original is"
        )
    if route == names.DLQ_INVALID_ROUTE:
        raise VebusError(
            f"dead letter {dead_letter.id} was never routed (invalid event); "
            "give a route to send it to (--to-route)"
        )
    headers = dict(dead_letter.headers)
    headers[names.CE_PREFIX + names.REPLAY_EXTENSION] = _now()
    msg_id = replay_msg_id(dead_letter)
    headers[MSG_ID] = msg_id
    ack = await publish(js, names.route_subject(route), dead_letter.body, headers)
    await delete_dead_letter(js, dead_letter.id)
    return Replayed(
        id=dead_letter.id,
        route=names.token(route),
        msg_id=msg_id,
        duplicate=bool(getattr(ack, "duplicate", False)),
    )


class Pacer:
    """Spaces operations `1/rate` seconds apart (no limit when rate is 0).

    A pacer that fell behind does not burst to catch up: the next slot is never earlier
    than now.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] | None = None) -> None:
        if rate < 0:
            raise ValueError(f"rate: expected >= 0 events/s, got {rate}")
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._clock = clock

    def delay(self) -> float:
        """Seconds to wait before the next operation (0 if it may go now); takes the slot."""
        if not self._interval:
            return 0.0
        now = self._clock() if self._clock else asyncio.get_running_loop().time()
        slot = max(self._next, now)
        self._next = slot + self._interval
        return slot - now

    async def wait(self) -> None:
        """Wait for the next slot."""
        delay = self.delay()
        if delay > 0:
            await asyncio.sleep(delay)


class ReplayOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one selected dead letter during a replay."""

    dead_letter: DeadLetter
    #: replayed: on its route now, dead letter deleted; gone: someone else replayed or
    #: purged it meanwhile; failed: it stays a dead letter (`error` says why)
    status: Literal["replayed", "gone", "failed"]
    replayed: Replayed | None = None
    error: str | None = None


OutcomeCallback = Callable[[ReplayOutcome], Awaitable[None]]


async def replay_selection(
    js: JetStreamContext,
    selection: Selection,
    *,
    to_route: str | None = None,
    rate: float = 0.0,
    after: int = 0,
    upto: int | None = None,
    stopping: asyncio.Event | None = None,
    on_outcome: OutcomeCallback | None = None,
) -> None:
    """Replay the selected dead letters one at a time, oldest first, at most `rate` per
    second (0: no limit), until done or `stopping` is set.

    Each dead letter is published, acknowledged and deleted before the next one starts, so
    stopping (or dying) leaves at most the one in flight both replayed and not yet
    deleted; replaying that one again is harmless (same Msg-Id). `upto` (the last id when
    the replay was asked for) keeps dead letters that arrive meanwhile, e.g. the replayed
    events failing again, out of it. `on_outcome` is awaited after each dead letter.
    """
    pacer = Pacer(rate)
    stop = stopping or asyncio.Event()
    async for dl in iter_dead_letters(js, selection=selection, after=after, upto=upto):
        if stop.is_set():
            return
        delay = pacer.delay()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        try:
            done = await replay_dead_letter(js, dl, to_route=to_route)
        except DeadLetterNotFoundError:
            outcome = ReplayOutcome(dead_letter=dl, status="gone")
        except VebusError as e:
            outcome = ReplayOutcome(dead_letter=dl, status="failed", error=str(e))
        else:
            outcome = ReplayOutcome(dead_letter=dl, status="replayed", replayed=done)
        if on_outcome is not None:
            await on_outcome(outcome)
