"""The raw two-stage pipeline: what the filter and the dispatcher do, as bare nats-py loops.

The fair limit for vebus's pipeline (issue 20): the same work, written as the plainest
nats-py programs, in two processes on the same machine, with the same in-flight bounds:

- stage 1, `--hop`: a durable pull consumer on VEBUS_EVENTS, `fetch` of up to 128, at most
  256 in flight (the filter's), `js.publish` of each event to `vebus.routes.<route>`
  (route `r<vm number % routes>`, by the event's `data.Vm.Name`, as the routes config of
  loadtest/pipeline.py matches it) with its headers and `<Msg-Id>:<route>`, wait for the
  publish ack, then ack. No CloudEvent parsing, no pattern matching.
- stage 2, `--post`: a durable pull consumer on VEBUS_ROUTES, `fetch` of up to 16, at most
  16 in flight (a route's default max_in_flight), an aiohttp POST of the event in binary
  mode (`ce-` headers taken as they are) over one keep-alive session to the same sink,
  ack after the 2xx. No delivery policy, no dead letters, no telemetry.

Both run on the event loop VEBUS_EVENT_LOOP chooses, like the services. Each prints
`ready` once its consumer exists; the runner then takes their CPU time, as it does for the
services once they are ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from loadtest.common import BoundedFetch
from loadtest.dispatcher import cpu_seconds
from loadtest.pipeline import Bench, rate_of, routes_yaml
from vebus import names
from vebus.local.embedded import ManagedProcess
from vebus.names import MSG_ID
from vebus.runtime import eventloop

HOP_BATCH, HOP_IN_FLIGHT = 128, 256  # the filter's
POST_IN_FLIGHT = 16  # a route's default max_in_flight

__all__ = ["raw_pipeline_run"]


async def _consume(
    nats_url: str,
    stream: str,
    durable: str,
    subjects: str,
    batch: int,
    in_flight: int,
    count: int,
    work: Any,
) -> None:
    """Fetch from a durable consumer, at most `in_flight` running `work(msg)` then ack."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=max(1000, in_flight * 8),
        ),
    )
    psub = await js.pull_subscribe_bind(durable, stream)
    print("ready", flush=True)
    bound = BoundedFetch(in_flight, count)

    async def handle(msg: Msg) -> None:
        done = False
        try:
            await work(js, msg)
            await msg.ack()
            done = True
        except Exception as e:  # redelivered after ack_wait, like any lost message
            print(f"{durable}: {e!r}", flush=True)
        finally:
            bound.release(done=done)

    await bound.run(psub, handle, batch)
    await nc.close()


async def hop(nats_url: str, count: int, routes: int) -> None:
    """Stage 1: VEBUS_EVENTS -> vebus.routes.<route>, ack after the publish ack."""

    async def work(js: Any, msg: Msg) -> None:
        headers = msg.headers or {}
        vm = json.loads(msg.data)["Vm"]["Name"] if routes > 1 else "vm-0"
        route = f"r{int(vm[3:]) % routes}"
        await js.publish(
            names.route_subject(route),
            msg.data,
            headers={**headers, MSG_ID: f"{headers.get(MSG_ID)}:{route}"},
        )

    await _consume(nats_url, names.EVENTS_STREAM, "raw-hop", names.EVENTS_SUBJECTS,
                   HOP_BATCH, HOP_IN_FLIGHT, count, work)  # fmt: skip


async def post(nats_url: str, sink_url: str, count: int) -> None:
    """Stage 2: VEBUS_ROUTES -> HTTP POST (binary mode), ack after the 2xx."""
    connector = aiohttp.TCPConnector(limit=POST_IN_FLIGHT, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def work(js: Any, msg: Msg) -> None:
            headers = {k: v for k, v in (msg.headers or {}).items() if k.startswith("ce-")}
            headers["Content-Type"] = "application/json"
            async with session.post(sink_url, data=msg.data, headers=headers) as resp:
                await resp.read()
                if resp.status // 100 != 2:
                    raise RuntimeError(f"sink answered {resp.status}")

        await _consume(nats_url, names.ROUTES_STREAM, "raw-post", names.ROUTES_SUBJECTS,
                       POST_IN_FLIGHT, POST_IN_FLIGHT, count, work)  # fmt: skip


def _start(workdir: Path, name: str, args: list[str]) -> ManagedProcess:
    proc = ManagedProcess(name, [sys.executable, "-m", "loadtest.rawpipe", *args],
                          workdir / f"{name}.log").start()  # fmt: skip
    deadline = time.monotonic() + 60
    while b"ready" not in proc.log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{proc.output()[-3000:]}")
        time.sleep(0.05)
    return proc


async def raw_pipeline_run(workdir: Path, count: int, routes: int = 1) -> dict[str, Any]:
    """`count` events through the two raw stages to the sink: events/s at the sink and
    CPU per event of each stage (from the moment each was ready)."""
    async with Bench(workdir) as b:
        b.write_config(routes_yaml(b.nats_url, b.sink.url, routes))
        await b.ensure_streams()
        procs: dict[str, ManagedProcess] = {}
        try:
            procs["post"] = await asyncio.to_thread(
                _start, workdir, "raw-post", ["--post", b.nats_url, b.sink.url, str(count)]
            )
            cpu0 = {"post": cpu_seconds(procs["post"].pid)}
            await b.inject(0, count, routes)
            procs["hop"] = await asyncio.to_thread(
                _start, workdir, "raw-hop", ["--hop", b.nats_url, str(count), str(routes)]
            )
            cpu0["hop"] = cpu_seconds(procs["hop"].pid)
            await b.wait_sink(count, max(120.0, count / 100), "raw pipeline")
            cpu = {k: (cpu_seconds(p.pid) - cpu0[k]) / count * 1e6 for k, p in procs.items()}
            _, recv = b.latencies()
        finally:
            for p in procs.values():
                p.kill()
    return {"events": count, "events_per_s": rate_of(recv), "cpu_us_per_event": cpu}


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.rawpipe", description=__doc__)
    p.add_argument("--hop", nargs=3, metavar=("NATS_URL", "COUNT", "ROUTES"))
    p.add_argument("--post", nargs=3, metavar=("NATS_URL", "SINK_URL", "COUNT"))
    a = p.parse_args()
    if a.hop:
        eventloop.run(hop(a.hop[0], int(a.hop[1]), int(a.hop[2])))
    elif a.post:
        eventloop.run(post(a.post[0], a.post[1], int(a.post[2])))
    else:
        p.error("--hop or --post")


if __name__ == "__main__":
    cli()
