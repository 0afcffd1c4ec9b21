"""Reading a time window of a stream: the messages that entered it between two instants.

An ephemeral pull consumer (no acks, in memory, deleted when done, else when idle) starts
at the window's first instant and stops at the first message past its end. The pull
protocol is spoken directly, as the pull worker does (vebus.bus.consume): one request
for a large batch (`no_wait`: what the stream has, then a 404 that ends it) into a
subscription callback, and the messages are yielded as they arrive. nats-py's `fetch`
waited for each message with a task and a timer of its own: reading a window cost about
45 µs per message on a 2-core machine that way, and about 20 µs this way (the console's
history search reads up to 100,000 of them; loadtest/RESULTS.md, "Console").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections import deque
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from vebus import names
from vebus.bus import natsapi

__all__ = ["iter_window"]

#: seconds without a message while a request is outstanding before the read gives up
STALL = 5.0


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
    asked = dt.datetime.now(dt.UTC)
    info = await js.add_consumer(stream, config)
    consumer, pending = info.name, info.num_pending or 0
    # a window that ends now or later ends with the messages pending when it was asked
    # for (later ones are past its end): counting them saves parsing each message's
    # metadata, a good part of the cost of a long read
    by_count = end is None or end >= asked
    nc = natsapi.connection(js)
    api = f"{natsapi.api_prefix(js)}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    arrived: deque[Msg] = deque()
    wake = asyncio.Event()
    ended = False

    async def on_message(msg: Msg) -> None:
        nonlocal ended
        if not msg.data and msg.headers and Header.STATUS in msg.headers:
            ended = True  # 404 no more messages, 408 expired, 409 ...: this request is over
        else:
            arrived.append(msg)
        wake.set()

    sub = await nc.subscribe(inbox := nc.new_inbox(), cb=on_message, pending_msgs_limit=-1)
    try:
        while pending > 0:
            want = min(batch, pending)
            ended = False
            request = {"batch": want, "no_wait": True}
            await nc.publish(api, json.dumps(request).encode(), reply=inbox)
            got = 0
            while got < want:
                if not arrived:
                    if ended:
                        break
                    wake.clear()
                    try:
                        async with asyncio.timeout(STALL):
                            await wake.wait()
                    except TimeoutError:
                        return
                    continue
                msg = arrived.popleft()
                got += 1
                if by_count:
                    pending -= 1
                else:
                    meta = msg.metadata
                    if end is not None and meta.timestamp > end:
                        return
                    pending = meta.num_pending
                yield msg
            if got == 0:
                return  # nothing came although the consumer said there was more
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        # gone now rather than after its inactive threshold: `vebus status` and the
        # console list consumers, and a search every few seconds would add up
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await js.delete_consumer(stream, consumer)
