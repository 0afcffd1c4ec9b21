"""History: past events in VEBUS_EVENTS by time range, vCenter, type, object and user.

A search reads a time window of the stream (`vebus.bus.window.iter_window`: one ephemeral
consumer, large batches) and stops as soon as it has a page. What the subject decides is
left to the server: a vCenter and an event class are tokens of
`vebus.events.<vcenter>.<class>`, so the consumer's filter subject skips every other event
without sending it. Object and user are in the body: each body is first looked at as bytes
(is the word in it at all? JSON writes plain characters as they are) and only then decoded,
into `summary.Probe`, which reads the few fields a row shows. That is what keeps a one-hour
search over 100,000 events within a couple of seconds, also when filtering by object or
user (loadtest/RESULTS.md, "Console").

Rows come oldest first, as the stream holds them; `next_after` continues after the last.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.bus.window import iter_window
from vebus.errors import InvalidEventError
from vebus.timespec import format_time, parse_time, utcnow
from vebus_console.summary import Row, probe, row_of

__all__ = ["MAX_EXPORT", "Query", "SearchPage", "iter_matches", "parse_query", "search"]

#: events a search asks for at a time
BATCH = 5000
#: rows per page, at most
MAX_LIMIT = 500
#: events one export writes at most
MAX_EXPORT = 200_000
_VSPHERE_TYPE = re.compile(r"^com\.vmware\.vsphere\.(?P<cls>.+)\.v\d+$")


@dataclass(frozen=True, kw_only=True)
class Query:
    """What to look for: every condition given must hold."""

    start: dt.datetime
    end: dt.datetime
    vcenter: str = ""
    #: an event class (`VmPoweredOffEvent`) or a whole type (`com.vmware.vsphere...v0`)
    type: str = ""
    #: part of an object's name (VM, host, datastore, ...), any case
    object: str = ""
    #: part of the user name, any case
    user: str = ""
    #: continue after this stream sequence (the previous page's `next_after`)
    after: int = 0
    limit: int = 50
    #: `to` was now: the window ends with what the stream holds when the search starts
    open_end: bool = False

    @property
    def event_class(self) -> str:
        """The class the type names: the subject's last token."""
        m = _VSPHERE_TYPE.match(self.type)
        return m.group("cls") if m else self.type

    def subject(self) -> str:
        """The filter subject: what the vCenter and the class decide."""
        vc = names.token(self.vcenter) if self.vcenter else "*"
        cls = names.token(self.event_class) if self.type else "*"
        if cls == "*" and vc != "*":
            return names.vcenter_subjects(self.vcenter)
        if cls == "*":
            return names.EVENTS_SUBJECTS
        return f"{names.EVENTS_PREFIX}.{vc}.{cls}"


def parse_query(params: dict[str, str], *, now: dt.datetime | None = None) -> Query:
    """A Query from a form (`from`, `to`, `vcenter`, `type`, `object`, `user`, `after`,
    `limit`); ValueError names the field that is wrong. `from` defaults to 1h, `to` to now."""
    now = now or utcnow()

    def when(key: str, default: str) -> dt.datetime:
        try:
            return parse_time(params.get(key) or default, now=now)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None

    start, end = when("from", "1h"), when("to", "now")
    if start >= end:
        raise ValueError(f"from: {format_time(start)} is not before to ({format_time(end)})")

    def number(key: str, default: int, lo: int, hi: int) -> int:
        raw = params.get(key) or str(default)
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise ValueError(f"{key}: expected a number from {lo} to {hi}, got {raw!r}")
        return int(raw)

    return Query(
        start=start,
        end=end,
        vcenter=(params.get("vcenter") or "").strip(),
        type=(params.get("type") or "").strip(),
        object=(params.get("object") or "").strip(),
        user=(params.get("user") or "").strip(),
        after=number("after", 0, 0, 2**63),
        limit=number("limit", 50, 1, MAX_LIMIT),
        open_end=(params.get("to") or "now").strip().lower() == "now",
    )


#: characters that every JSON encoder writes as they are (never as a \u escape): a word
#: of only these, lower-cased, is in the lower-cased body wherever the decoded field has it
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 .,:;_-+=@#$%!?*'~^|/()[]{}")


def _needle(word: str) -> bytes | None:
    """`word` as the raw body would hold it, for a look before decoding; None when JSON
    may write it otherwise (escapes), so that every body must be decoded."""
    low = word.lower()
    if not low or not set(low) <= _PLAIN:
        return None
    return low.encode()


@dataclass
class _Matcher:
    query: Query
    full_type: str = ""
    needles: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        q = self.query
        if "." in q.type:  # a whole type: the subject's class token may stand for others
            self.full_type = q.type
        self.needles = [n for n in (_needle(q.object), _needle(q.user)) if n]
        self.obj, self.user = q.object.lower(), q.user.lower()

    def row(self, msg: Msg) -> Row | None:
        """The row of `msg` when it matches, else None."""
        headers = msg.headers or {}
        if self.full_type and headers.get(names.CE_PREFIX + "type") != self.full_type:
            return None
        body = msg.data
        if self.needles:
            low = body.lower()
            if not all(n in low for n in self.needles):
                return None
        if self.obj or self.user:
            p = probe(body)
            if self.user and self.user not in (p.UserName or "").lower():
                return None
            if self.obj and not any(self.obj in o.lower() for o in p.objects()):
                return None
        try:
            event = from_headers(headers, body)
        except InvalidEventError:
            return None
        meta = msg.metadata
        return row_of(
            msg.subject,
            event,
            seq=meta.sequence.stream,
            stored=format_time(meta.timestamp),
        )


async def iter_matches(
    js: JetStreamContext, query: Query, *, stats: dict[str, int] | None = None
) -> AsyncGenerator[tuple[Msg, Row], None]:
    """Every event of the window that `query` selects, oldest first, with its row."""
    matcher = _Matcher(query)
    scanned = 0
    try:
        async for msg in iter_window(
            js,
            start=query.start,
            end=None if query.open_end else query.end,
            subject=query.subject(),
            batch=BATCH,
            after=query.after,
        ):
            scanned += 1
            row = matcher.row(msg)
            if row is not None:
                yield msg, row
    finally:
        if stats is not None:
            stats["scanned"] = scanned


@dataclass(frozen=True)
class SearchPage:
    """One page of a search."""

    rows: list[Row]
    #: where the next page starts (`after`); 0 when this is the last
    next_after: int
    scanned: int
    seconds: float


async def search(js: JetStreamContext, query: Query) -> SearchPage:
    """The first `query.limit` events `query` selects, and where the next page starts."""
    began = time.perf_counter()
    rows: list[Row] = []
    stats: dict[str, int] = {}
    more = False
    matches = iter_matches(js, query, stats=stats)
    try:
        async for _, row in matches:
            if len(rows) == query.limit:
                more = True
                break
            rows.append(row)
    finally:
        await matches.aclose()
    return SearchPage(
        rows=rows,
        next_after=rows[-1].seq if more and rows else 0,
        scanned=stats.get("scanned", 0),
        seconds=time.perf_counter() - began,
    )
