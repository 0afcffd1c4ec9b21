"""Follow vebus's events from another program, at-least-once, from where it stopped.

A plain nats-py program (no vebus import): it reads `vebus.events.>` (or a narrower
subject) through the durable consumer `subscriber` on the VEBUS_EVENTS stream, as the NATS
user `subscriber` of deploy/nats/auth.conf, which may do that and nothing else. The
consumer remembers what was acknowledged, so a restart goes on where the last run stopped;
a message is acknowledged only after it was handled (here: printed as one JSON line), so a
crash in between means it comes again, never that it is lost.

    pip install nats-py
    NATS_URL=nats://127.0.0.1:4222 NATS_USER=subscriber NATS_PASSWORD=... \\
    python follow.py [--subject vebus.events.vc01.>] [--count N]

`vebus subscriber` prints these settings for a running vebus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

STREAM = "VEBUS_EVENTS"
DURABLE = "subscriber"


def handle(msg: nats.aio.msg.Msg) -> None:
    """Your code: here, one JSON line with the event's id, type, source and data."""
    headers = msg.headers or {}
    try:
        data = json.loads(msg.data) if msg.data else None
    except ValueError:
        data = msg.data.decode(errors="replace")
    print(
        json.dumps(
            {
                "subject": msg.subject,
                "id": headers.get("ce-id"),
                "type": headers.get("ce-type"),
                "source": headers.get("ce-source"),
                "time": headers.get("ce-time"),
                "data": data,
            }
        ),
        flush=True,
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", default="vebus.events.>")
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = p.parse_args()
    nc = await nats.connect(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        user=os.environ.get("NATS_USER", "subscriber"),
        password=os.environ.get("NATS_PASSWORD"),
    )
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=DURABLE,
        filter_subject=args.subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
    )
    await js.add_consumer(STREAM, config)  # created, or the same one found again
    sub = await js.pull_subscribe_bind(DURABLE, STREAM)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    seen = 0
    while not stop.is_set() and (not args.count or seen < args.count):
        try:
            msgs = await sub.fetch(min(64, args.count - seen) if args.count else 64, timeout=2)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            handle(msg)
            await msg.ack()  # only once it was handled: at-least-once
            seen += 1
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
