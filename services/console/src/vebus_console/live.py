"""Live events: one core NATS subscription on `vebus.events.>`, fanned out to every open page.

Each page is a `Viewer` with its own filter and a send budget of `console.live_rate`
events per second (a token bucket holding one second's worth). Events that match but find
the bucket empty, or the viewer's queue full (a slow network), are skipped and counted:
once a second every viewer gets a `stats` frame saying how many events matched, how many
were sent and how many were skipped, and the page says it is sampling. So a burst of
1,000 events/s costs the page at most `live_rate` rows a second, and the server decodes
each event once, only while someone watches, and encodes an event as JSON only for the
viewers it is sent to.

A core subscription (not a JetStream consumer) is what DESIGN.md asks for: it costs the
server nothing to keep and nothing is acknowledged; a console that falls behind loses
live frames, never events (the history has them all). The last RECENT events are kept so
that a page that opens shows what just happened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vebus import names
from vebus.bus.cloudevent import CloudEvent, from_headers
from vebus.errors import InvalidEventError
from vebus_console.eventjson import event_document
from vebus_console.filters import EventFilter
from vebus_console.summary import Row, row_of

__all__ = ["RECENT", "LiveHub", "Viewer"]

log = logging.getLogger(__name__)

#: events kept for a page that opens
RECENT = 200
#: frames waiting for one viewer's connection before it counts as slow
QUEUE = 256
#: how often each viewer is told what was sent and skipped
STATS_EVERY = 1.0
#: a core subscription's buffer: past it nats-py drops messages (counted as slow)
PENDING_MSGS = 100_000


@dataclass(eq=False)
class Viewer:
    """One open live page: its filter, its send budget and its queue of SSE frames."""

    filter: EventFilter
    rate: float
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    matched: int = 0
    sent: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def take(self, now: float) -> bool:
        """Spend one event of the budget; False when it is used up for now."""
        self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def put(self, frame: bytes) -> bool:
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            return False


def _frame(kind: str, payload: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"


def event_frame(event: CloudEvent, row: Row) -> bytes:
    """The SSE frame of one event: its row and its whole CloudEvent (for copy as JSON)."""
    return _frame("ev", {"row": row, "event": event_document(event)})


class LiveHub:
    """The console's one subscription on every event, and the viewers it feeds."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._sub: Subscription | None = None
        self._viewers: set[Viewer] = set()
        #: the last events as they came (subject, headers, body): decoded only for a page
        #: that opens, so that no one watching costs next to nothing
        self.recent: collections.deque[tuple[str, dict[str, str] | None, bytes]] = (
            collections.deque(maxlen=RECENT)
        )
        #: events received since the last stats frame, and in all
        self.received = 0
        self.total = 0
        self._ticker: asyncio.Task[None] | None = None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            names.EVENTS_SUBJECTS, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS
        )
        self._ticker = asyncio.create_task(self._tick(), name="live-stats")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        for viewer in list(self._viewers):
            with contextlib.suppress(asyncio.QueueFull):
                viewer.queue.put_nowait(None)  # the page's stream ends

    def add(self, flt: EventFilter, rate: float, *, backlog: int = 50) -> Viewer:
        """A new viewer, primed with up to `backlog` recent events its filter takes
        (oldest first, so that the page shows the newest on top)."""
        viewer = Viewer(filter=flt, rate=rate)
        decoded = []
        for subject, headers, body in self.recent:
            try:
                event = from_headers(headers, body)
            except InvalidEventError:
                continue
            decoded.append((event, row_of(subject, event)))
        primed = [(ev, row) for ev, row in decoded if flt.matches(ev, row)][-backlog:]
        for event, row in primed:
            viewer.put(event_frame(event, row))
        self._viewers.add(viewer)
        return viewer

    def remove(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)

    async def _on_msg(self, msg: Msg) -> None:
        self.received += 1
        self.total += 1
        self.recent.append((msg.subject, msg.headers, msg.data))
        if not self._viewers:
            return
        try:
            event = from_headers(msg.headers, msg.data)
        except InvalidEventError:
            return  # the filter dead-letters it; nothing to show
        row = row_of(msg.subject, event)
        now = time.monotonic()
        frame: bytes | None = None
        for viewer in self._viewers:
            if viewer.filter and not viewer.filter.matches(event, row):
                continue
            viewer.matched += 1
            if not viewer.take(now):
                viewer.skipped += 1
                continue
            if frame is None:
                frame = event_frame(event, row)
            if viewer.put(frame):
                viewer.sent += 1
            else:
                viewer.skipped += 1

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(STATS_EVERY)
            now = time.monotonic()
            elapsed = max(now - last, 1e-3)
            last = now
            received, self.received = self.received, 0
            for viewer in list(self._viewers):
                stats = {
                    "received": round(received / elapsed, 1),
                    "matched": round(viewer.matched / elapsed, 1),
                    "sent": viewer.sent,
                    "skipped": viewer.skipped,
                    "rate": viewer.rate,
                }
                viewer.matched = viewer.sent = viewer.skipped = 0
                # stats go even to a slow page: drop an old frame for them if need be
                if not viewer.put(_frame("stats", stats)):
                    with contextlib.suppress(asyncio.QueueEmpty):
                        viewer.queue.get_nowait()
                    viewer.put(_frame("stats", stats))
