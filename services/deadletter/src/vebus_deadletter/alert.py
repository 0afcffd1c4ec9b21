"""The dead-letter alert: a CloudEvent to a route when one route's dead letters pile up.

Every `interval` the deadletter service counts the dead letters of each route (VEBUS_DLQ's
per-subject counts: cheap). When a route reaches `threshold` it publishes a
`io.vebus.deadletter.ThresholdExceeded.v0` event to the alert route
(`vebus.routes.<alert route>`, delivered by the dispatcher like any other); when the
route falls below it again (replayed, purged, expired), a `...ThresholdCleared.v0` event.

Whether a route's alert is active is kept in the state bucket (`alert.<route>`), changed
compare-and-set, so several replicas send one event per change. The event is published
before the state changes, with a Msg-Id made of the route and the state's revision: a
replica that dies in between leaves the change to the next count, whose publish JetStream
drops as a duplicate. The alert route's own dead letters never raise an alert (it would
be told about itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import msgspec
import nats.errors
from nats.js import JetStreamContext

from vebus import aio, names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import iter_dead_letters
from vebus.bus.publish import publish
from vebus.config import DeadletterAlertConfig
from vebus.errors import StaleRevisionError, VebusError
from vebus.names import MSG_ID
from vebus.timespec import format_time, utcnow
from vebus_deadletter.state import StateStore

__all__ = ["ALERT_SOURCE", "CLEARED_TYPE", "EXCEEDED_TYPE", "AlertState", "DeadLetterAlert"]

log = logging.getLogger(__name__)

ALERT_SOURCE = "vebus://deadletter"
EXCEEDED_TYPE = "io.vebus.deadletter.ThresholdExceeded.v0"
CLEARED_TYPE = "io.vebus.deadletter.ThresholdCleared.v0"
_PREFIX = "alert"


class AlertState(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a route's alert is active, since when, and at what count it changed."""

    route: str
    active: bool
    since: str
    count: int


_decoder = msgspec.json.Decoder(AlertState)


async def route_counts(js: JetStreamContext) -> dict[str, int]:
    """Dead letters per route (the `_invalid` pseudo-route included)."""
    info = await js.stream_info(names.DLQ_STREAM, subjects_filter=names.DLQ_SUBJECTS)
    out: dict[str, int] = {}
    for subject, n in (info.state.subjects or {}).items():
        out[names.route_of_dlq_subject(subject)] = int(n)
    return out


class DeadLetterAlert:
    """Counts, compares with the threshold, and tells the alert route about changes."""

    def __init__(
        self, js: JetStreamContext, store: StateStore, config: DeadletterAlertConfig
    ) -> None:
        self._js = js
        self._store = store
        self._config = config
        #: alert events published by this replica
        self.sent = 0

    async def check(self) -> None:
        """Count once and publish what changed."""
        counts = await route_counts(self._js)
        states: dict[str, tuple[AlertState | None, int]] = {}
        async for _, value, revision in self._store.scan(_PREFIX):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                known = _decoder.decode(value)
                states[known.route] = (known, revision)
        alert_route = names.token(self._config.route)
        for route in sorted(set(counts) | set(states)):
            if route == alert_route:
                continue
            count = counts.get(route, 0)
            state, revision = states.get(route, (None, 0))
            active = state is not None and state.active
            if count >= self._config.threshold and not active:
                await self._change(route, count, revision, active=True)
            elif count < self._config.threshold and active:
                await self._change(route, count, revision, active=False)

    async def _change(self, route: str, count: int, revision: int, *, active: bool) -> None:
        codes: dict[str, int] = {}
        if active:
            async for dl in iter_dead_letters(self._js, route=route):
                codes[dl.code] = codes.get(dl.code, 0) + 1
        now = utcnow()
        data = {
            "route": route,
            "count": count,
            "threshold": self._config.threshold,
            "codes": codes,
        }
        event = CloudEvent(
            id=f"{route}-{revision}-{uuid.uuid4().hex[:8]}",
            source=ALERT_SOURCE,
            type=EXCEEDED_TYPE if active else CLEARED_TYPE,
            subject=route,
            time=format_time(now),
            data=msgspec.json.encode(data),
        )
        msg_id = f"dlq-alert:{route}:{revision}"
        ack = await publish(
            self._js,
            names.route_subject(self._config.route),
            event.data,
            to_headers(event, {MSG_ID: msg_id}),
        )
        state = AlertState(route=route, active=active, since=format_time(now), count=count)
        try:
            await self._store.update(f"{_PREFIX}.{route}", msgspec.json.encode(state), revision)
        except StaleRevisionError:
            return  # another replica recorded the change; its event and ours are one
        if not getattr(ack, "duplicate", False):
            self.sent += 1
        log.warning(
            "route %s has %d dead letter(s) (threshold %d): %s sent to route %s",
            route,
            count,
            self._config.threshold,
            event.type,
            self._config.route,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Check every `interval` until stopping."""
        async for _ in aio.every(float(self._config.interval), stopping):
            try:
                await self.check()
            except (VebusError, nats.errors.Error, TimeoutError) as e:
                log.warning("dead-letter alert check failed: %r", e)
