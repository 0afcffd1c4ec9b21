"""Reading a time window of a stream: the messages that entered it between two instants.

An ephemeral pull consumer (no acks, in memory, deleted when done, else when idle) starts
at the window's first instant and stops at the first message past its end: one fetch per
batch, not one request per message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vebus import names

__all__ = ["iter_window"]


async def iter_window(
    js: JetStreamContext,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    stream: str = names.EVENTS_STREAM,
    subject: str = names.EVENTS_SUBJECTS,
    batch: int = 1000,
    after: int = 0,
    headers_only: bool = False,
) -> AsyncIterator[Msg]:
    """Every message of `stream` on `subject` whose stream timestamp is in [start, end];
    with `after`, from the message after that stream sequence instead of from `start` (the
    next page of a search). `headers_only`: the bodies stay on the server (counting by
    subject or header costs no body bytes)."""
    if after:
        policy, start = DeliverPolicy.BY_START_SEQUENCE, None
    else:
        policy = DeliverPolicy.BY_START_TIME if start else DeliverPolicy.ALL
    config = ConsumerConfig(
        deliver_policy=policy,
        opt_start_seq=after + 1 if after else None,
        opt_start_time=start,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=30.0,
        mem_storage=True,
        headers_only=headers_only or None,
    )
    psub = await js.pull_subscribe(subject, stream=stream, config=config)
    consumer = None
    try:
        info = await psub.consumer_info()
        consumer, pending = info.name, info.num_pending or 0
        while pending > 0:
            try:
                msgs = await psub.fetch(min(batch, pending), timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                return
            for msg in msgs:
                if end is not None and msg.metadata.timestamp > end:
                    return
                yield msg
                pending = msg.metadata.num_pending
    finally:
        with contextlib.suppress(nats.errors.Error):
            await psub.unsubscribe()
        if consumer:
            # gone now rather than after its inactive threshold: `vebus status` and the
            # console list consumers, and a search every few seconds would add up
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(stream, consumer)
