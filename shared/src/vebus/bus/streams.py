"""Idempotent creation of the vebus streams and consumers.

A stream or consumer that exists with a compatible config is updated in place; one whose
config cannot be changed (retention, storage) is reported with what differs and left alone,
never silently recreated: its messages are somebody's events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from vebus import names
from vebus.errors import StreamConflictError

__all__ = [
    "ROUTES_MAX_CONSUMERS",
    "StreamSettings",
    "dlq_stream_config",
    "ensure_consumer",
    "ensure_stream",
    "ensure_streams",
    "events_stream_config",
    "routes_stream_config",
]

log = logging.getLogger(__name__)

#: properties JetStream cannot change on an existing stream
_IMMUTABLE = ("retention", "storage")


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """What an operator chooses about the streams (vebus.config's `streams:` and
    `nats.replicas`), in seconds and counts; 0 seconds of age: keep for ever."""

    replicas: int = 1
    events_max_age: float = 7 * 86400.0
    events_max_bytes: int = -1
    route_max_msgs: int = 1_000_000
    dlq_max_age: float = 30 * 86400.0
    duplicate_window: float = 120.0


def events_stream_config(s: StreamSettings) -> StreamConfig:
    """VEBUS_EVENTS: the history of every event, kept by age and size."""
    return StreamConfig(
        name=names.EVENTS_STREAM,
        subjects=[names.EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=s.events_max_age or None,
        max_bytes=s.events_max_bytes,
        duplicate_window=s.duplicate_window,
        num_replicas=s.replicas,
        allow_direct=True,
    )


#: consumers VEBUS_ROUTES may have: one per route and delivering service, plus a few of the
#: deadletter service's. nats-server 2.15 gives a stream 1,000 unless it sets its own (and
#: takes 0 or -1 as "its default"), which stopped vebus at 1,000 routes
ROUTES_MAX_CONSUMERS = 100_000


def routes_stream_config(s: StreamSettings) -> StreamConfig:
    """VEBUS_ROUTES: one work queue per route, each bounded so one cannot fill the others."""
    return StreamConfig(
        name=names.ROUTES_STREAM,
        subjects=[names.ROUTES_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_msgs_per_subject=s.route_max_msgs,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        duplicate_window=s.duplicate_window,
        num_replicas=s.replicas,
        max_consumers=ROUTES_MAX_CONSUMERS,
    )


def dlq_stream_config(s: StreamSettings) -> StreamConfig:
    """VEBUS_DLQ: dead letters, kept long."""
    return StreamConfig(
        name=names.DLQ_STREAM,
        subjects=[names.DLQ_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=s.dlq_max_age or None,
        duplicate_window=s.duplicate_window,
        num_replicas=s.replicas,
        allow_direct=True,
    )


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> None:
    """Create the stream, or update it to `want`; StreamConflictError if it cannot be."""
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        log.info("created stream %s", want.name)
        return
    have = info.config
    diffs = [
        f"{f}: has {getattr(have, f)!s}, vebus needs {getattr(want, f)!s}"
        for f in _IMMUTABLE
        if getattr(have, f) != getattr(want, f)
    ]
    if diffs:
        raise StreamConflictError(
            f"stream {want.name} exists with an incompatible config ({'; '.join(diffs)}); "
            f"it was left as it is: move its messages away and delete it, or point vebus "
            f"at another NATS account"
        )
    if _differs(have, want):
        await js.update_stream(want)
        log.info("updated stream %s", want.name)


def _differs(have: Any, want: Any) -> bool:
    for key, value in want.as_dict().items():
        if key in ("name",):
            continue
        if have.as_dict().get(key) != value:
            return True
    return False


async def ensure_streams(js: JetStreamContext, settings: StreamSettings) -> None:
    """All three vebus streams, created or updated."""
    for make in (events_stream_config, routes_stream_config, dlq_stream_config):
        await ensure_stream(js, make(settings))


async def ensure_consumer(js: JetStreamContext, stream: str, want: ConsumerConfig) -> None:
    """Create the durable consumer, or update it in place; conflicts are reported."""
    name = want.durable_name or want.name
    assert name is not None
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        await js.add_consumer(stream, want)
        log.info("created consumer %s on %s", name, stream)
        return
    have = info.config
    if (have.filter_subject or None) != (want.filter_subject or None):
        raise StreamConflictError(
            f"consumer {name} on {stream} filters {have.filter_subject!r}, vebus needs "
            f"{want.filter_subject!r}; delete it (`nats consumer rm {stream} {name}`) to go on"
        )
    if _differs(have, want):
        await js.add_consumer(stream, want)  # JetStream updates a durable in place
        log.info("updated consumer %s on %s", name, stream)
