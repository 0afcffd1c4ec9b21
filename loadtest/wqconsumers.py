"""nats-server's own cost of a message on a work-queue stream, by the number of consumers.

    uv run python -m loadtest.wqconsumers [--events N] [--consumers 1,100,1000]

The routes scenario's limit, measured without vebus: a fresh nats-server, a work-queue
stream like VEBUS_ROUTES (one subject per consumer, explicit acks), `consumers - 1` idle
pull consumers on subjects nothing is published to, and one consumer whose subject gets
N messages; a raw nats-py loop fetches and acks them. Reported: nats-server's CPU per
message (publishes, deliveries and acks together) and the loop's rate. On a work-queue
stream every ack asks whether any other consumer still needs the message, so the server's
cost per message grows with the consumers the stream has, busy or not.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from loadtest.common import print_table
from loadtest.dispatcher import cpu_seconds
from vebus.local.embedded import start_nats

__all__ = ["server_cost"]


async def server_cost(workdir: Path, consumers: int, events: int) -> dict[str, Any]:
    """One fresh server: nats-server CPU per message and the rate with `consumers`."""
    proc, port = start_nats(workdir / f"wq-{consumers}")
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="WQ", subjects=["wq.>"], retention=RetentionPolicy.WORK_QUEUE,
                         max_consumers=consumers + 10)
        )  # fmt: skip
        gate = asyncio.Semaphore(16)

        async def add(i: int) -> None:
            async with gate:
                await js.add_consumer("WQ", ConsumerConfig(
                    durable_name=f"c{i}", filter_subject=f"wq.r{i}", ack_policy=AckPolicy.EXPLICIT,
                    max_ack_pending=1000))  # fmt: skip

        started = time.perf_counter()
        await asyncio.gather(*(add(i) for i in range(consumers)))
        create_s = time.perf_counter() - started
        # the idle ones wait with a pull request each, as a dispatcher's routes do
        idle = [await js.pull_subscribe_bind(f"c{i}", "WQ") for i in range(1, consumers)]
        waits = [asyncio.create_task(s.fetch(1, timeout=600)) for s in idle]
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for start in range(0, events, 500):
            futs = [await js.publish_async("wq.r0", b"x" * 1500)
                    for _ in range(start, min(events, start + 500))]  # fmt: skip
            await asyncio.gather(*futs)
        sub = await js.pull_subscribe_bind("c0", "WQ")
        done = 0
        while done < events:
            msgs = await sub.fetch(128, timeout=5)
            for m in msgs:
                await m.ack()
            done += len(msgs)
        await nc.flush()
        took = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        return {
            "consumers": consumers,
            "events": events,
            "server_cpu_us_per_event": cpu / events * 1e6,
            "events_per_s": events / took,
            "create_consumers_s": create_s,
        }
    finally:
        await nc.close()
        proc.kill()


async def main(events: int, counts: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="vebus-wq-") as tmp:
        return [await server_cost(Path(tmp), c, events) for c in counts]


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.wqconsumers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--consumers", default="1,100,1000")
    a = p.parse_args()
    rows = asyncio.run(main(a.events, [int(c) for c in a.consumers.split(",")]))
    print_table("nats-server's cost of a message on a work-queue stream", rows)


if __name__ == "__main__":
    cli()
