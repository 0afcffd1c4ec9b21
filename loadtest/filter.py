"""Filter throughput against a raw nats-py consume -> republish -> ack loop.

    uv run python -m loadtest.filter [--short] [--profile]

Each run gets a fresh nats-server with VEBUS_EVENTS pre-loaded (the VEBA VmPoweredOffEvent,
a different VM name and Msg-Id each) and a config of 10 routes, each event matching one
(by `data.Vm.Name`), so both contenders write one copy per event to VEBUS_ROUTES:

- `raw`: a child process running the plainest nats-py loop that does the same I/O: a
  durable pull consumer on VEBUS_EVENTS, fetch(128), at most 256 messages in flight,
  `js.publish` of each to `vebus.routes.<route>` with the event's headers and
  `<Msg-Id>:<route>`, wait for the publish ack, then ack. No parsing, no matching.
- `filter`: `python -m vebus_filter` (same batch, same in-flight bound: its defaults).

Throughput is the number of copies divided by the time between the first and the last
copy stored (the stream's own timestamps), so process start-up does not count. The
contenders alternate over the rounds, best of each is kept (the machines are shared). The
goal (issue 5): the filter at least 0.7 of the raw loop. `--profile` adds a run of the
filter under cProfile (not counted: the profiler slows it down) and prints where its time
goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from loadtest.common import RESULTS, BoundedFetch, print_table, write_results
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.local.embedded import ManagedProcess, free_port, start_nats
from vebus.names import MSG_ID
from vebus.runtime import eventloop
from vebus_filter import app as filter_app

ROUTES = 10
BATCH = 128  # the filter's fetch size
IN_FLIGHT = filter_app.MAX_IN_FLIGHT
GOAL = 0.7
RAW_DURABLE = "raw-loop"
SAMPLE = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "veba" / "veba-VmPoweredOffEvent.json"
)


def sample_event(n: int) -> CloudEvent:
    """The VEBA sample, numbered: VM `vm-<n % ROUTES>`, key n."""
    veba = json.loads(SAMPLE.read_text(encoding="utf-8"))
    veba["data"]["Key"] = n
    veba["data"]["Vm"]["Name"] = f"vm-{n % ROUTES}"
    return CloudEvent(
        id=str(n),
        source=veba["source"],
        type=veba["type"],
        time=veba["time"],
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
        data=json.dumps(veba["data"]).encode(),
    )


def write_config(path: Path, nats_url: str) -> None:
    routes = "".join(
        f"  - name: r{i}\n"
        f"    match: {{type: [com.vmware.vsphere.VmPoweredOffEvent.v0],"
        f" data: {{Vm: {{Name: [vm-{i}]}}}}}}\n"
        f"    sink: {{kind: console}}\n"
        for i in range(ROUTES)
    )
    path.write_text(f"nats: {{url: '{nats_url}'}}\nroutes:\n{routes}")


# ------------------------------------------------------------------------------ the raw loop


async def raw_loop(nats_url: str, count: int) -> None:
    """Consume `count` events, republish each to its route, ack once stored."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_consumer(
        names.EVENTS_STREAM,
        ConsumerConfig(
            durable_name=RAW_DURABLE,
            filter_subject=names.EVENTS_SUBJECTS,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=filter_app.ACK_WAIT,
            max_ack_pending=IN_FLIGHT * 8,
        ),
    )
    psub = await js.pull_subscribe_bind(RAW_DURABLE, names.EVENTS_STREAM)
    bound = BoundedFetch(IN_FLIGHT, count)

    async def handle(msg: Msg) -> None:
        route = f"r{msg.metadata.sequence.stream % ROUTES}"
        headers = msg.headers or {}
        await js.publish(
            f"vebus.routes.{route}",
            msg.data,
            headers={**headers, MSG_ID: f"{headers.get(MSG_ID)}:{route}"},
        )
        await msg.ack()
        bound.release()

    await bound.run(psub, handle, BATCH)
    await nc.close()


# ------------------------------------------------------------------------------ one run


def _stamp(value: Any) -> float:
    """A JetStream message time (ISO 8601 with nanoseconds, or a datetime) as epoch seconds."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    text = str(value).replace("Z", "+00:00")
    head, _, rest = text.partition(".")
    if rest:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return dt.datetime.fromisoformat(text).timestamp()


async def _load(js: JetStreamContext, count: int, tag: str) -> None:
    batch: list[OutgoingMessage] = []
    for n in range(count):
        event = sample_event(n)
        headers = to_headers(event, {MSG_ID: f"vc01:{tag}:{n}"})
        batch.append(OutgoingMessage("vebus.events.vc01.VmPoweredOffEvent", event.data, headers))
        if len(batch) == 500:
            await publish_all(js, batch)
            batch = []
    if batch:
        await publish_all(js, batch)


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(
    workdir: Path, contender: str, count: int, profile: Path | None
) -> tuple[float, float | None]:
    """Copies stored by `contender` ("raw" or "filter") on a fresh server: per second, and
    per CPU second of the contender's process (None where /proc is not there)."""
    run = workdir / f"{contender}-{time.monotonic_ns()}"
    run.mkdir()
    nats_proc, port = start_nats(run / "nats")
    url = f"nats://127.0.0.1:{port}"
    config = run / "vebus.yaml"
    write_config(config, url)
    proc: ManagedProcess | None = None
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, load_config(config).stream_settings())
        await _load(js, count, run.name)
        args = [sys.executable]
        if profile is not None:
            args += ["-m", "cProfile", "-o", str(profile)]
        if contender == "raw":
            args += ["-m", "loadtest.filter", "--raw-loop", url, str(count)]
        else:
            args += ["-m", "vebus_filter", "--config", str(config)]
            args += ["--health-port", str(free_port()), "--log-level", "WARNING"]
        proc = ManagedProcess(contender, args, run / f"{contender}.log").start()
        deadline = time.monotonic() + max(60.0, count / 200)
        # CPU from the first copy seen to the last: start-up (imports, connecting) excluded
        cpu_start: tuple[float | None, int] | None = None
        while True:
            info = await js.stream_info(names.ROUTES_STREAM)
            if cpu_start is None and info.state.messages > 0:
                cpu_start = (_cpu_seconds(proc.pid), info.state.messages)
            if info.state.messages >= count:
                cpu_end = _cpu_seconds(proc.pid)
                break
            if proc.poll() is not None and contender == "filter":
                raise RuntimeError(f"the filter exited:\n{proc.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{contender}: only {info.state.messages}/{count} copies stored:\n"
                    f"{proc.output()[-3000:]}"
                )
            await asyncio.sleep(0.05)
        if info.state.messages != count:
            raise RuntimeError(f"{contender}: {info.state.messages} copies for {count} events")
        first = await js.get_msg(names.ROUTES_STREAM, seq=info.state.first_seq)
        last = await js.get_msg(names.ROUTES_STREAM, seq=info.state.last_seq)
        per_second = (count - 1) / (_stamp(last.time) - _stamp(first.time))
        per_cpu = None
        assert cpu_start is not None
        if cpu_start[0] is not None and cpu_end is not None and cpu_end > cpu_start[0]:
            per_cpu = (count - cpu_start[1]) / (cpu_end - cpu_start[0])
        return per_second, per_cpu
    finally:
        if proc is not None:
            if contender == "raw":  # it exits by itself once done (and writes its profile)
                for _ in range(100):
                    if proc.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
            proc.stop()
        with contextlib.suppress(nats.errors.Error):
            await nc.close()
        nats_proc.kill()


# ------------------------------------------------------------------------------ main


def _print_profile(path: Path) -> list[str]:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    lines: list[str] = []
    for func, (_, calls, tottime, cumtime, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )[:20]:
        where = f"{Path(func[0]).name}:{func[1]}({func[2]})"
        lines.append(f"{tottime:8.3f}s self {cumtime:8.3f}s total {calls:9d} calls  {where}")
    print("\n== the filter's profile (top 20 by own time)")
    print("\n".join(lines))
    return lines


async def main(short: bool, profile: bool, rounds: int | None) -> dict[str, Any]:
    count = 2000 if short else 20000
    rounds = rounds or (1 if short else 5)
    best: dict[str, float] = {"raw": 0.0, "filter": 0.0}
    best_cpu: dict[str, float] = {"raw": 0.0, "filter": 0.0}
    runs: list[dict[str, Any]] = []
    profile_path = RESULTS / "filter.prof" if profile else None
    with tempfile.TemporaryDirectory(prefix="vebus-load-filter-") as tmp:
        if profile_path is not None:  # a run of its own: cProfile slows the filter down
            await one_run(Path(tmp), "filter", count, profile_path)
        for round_ in range(rounds):
            for contender in ("raw", "filter"):
                value, per_cpu = await one_run(Path(tmp), contender, count, None)
                runs.append(
                    {
                        "round": round_ + 1,
                        "contender": contender,
                        "events/s": value,
                        "events/CPU-s": per_cpu if per_cpu is not None else "-",
                    }
                )
                best[contender] = max(best[contender], value)
                best_cpu[contender] = max(best_cpu[contender], per_cpu or 0.0)
    ratio = best["filter"] / best["raw"]
    cpu_ratio = best_cpu["filter"] / best_cpu["raw"] if best_cpu["raw"] else float("nan")
    medians = {
        c: statistics.median(r["events/s"] for r in runs if r["contender"] == c)
        for c in ("raw", "filter")
    }
    median_ratio = medians["filter"] / medians["raw"]
    print_table(
        f"{count} events, {ROUTES} routes (one match each), fetch {BATCH}, {IN_FLIGHT} in flight",
        runs,
    )
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(
        f"\nbest: raw {best['raw']:,.0f}/s, filter {best['filter']:,.0f}/s;"
        f" filter / raw = {ratio:.2f} (goal >= {GOAL}): {verdict}"
    )
    print(
        f"medians: raw {medians['raw']:,.0f}/s, filter {medians['filter']:,.0f}/s;"
        f" filter / raw = {median_ratio:.2f}"
    )
    print(
        f"per CPU second of each process (robust to a busy machine): raw"
        f" {best_cpu['raw']:,.0f}, filter {best_cpu['filter']:,.0f}; filter / raw = {cpu_ratio:.2f}"
    )
    results: dict[str, Any] = {
        "short": short,
        "events": count,
        "routes": ROUTES,
        "runs": runs,
        "best": best,
        "ratio": ratio,
        "medians": medians,
        "median_ratio": median_ratio,
        "best_per_cpu_second": best_cpu,
        "cpu_ratio": cpu_ratio,
        "goal": GOAL,
        "met": ratio >= GOAL,
    }
    if profile_path is not None:
        results["profile"] = _print_profile(profile_path)
    path = write_results("filter-short" if short else "filter", results)
    print(f"results: {path}")
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.filter", description=__doc__)
    parser.add_argument("--short", action="store_true", help="2,000 events, one round")
    parser.add_argument("--profile", action="store_true", help="profile the filter (cProfile)")
    parser.add_argument("--rounds", type=int, help="rounds of raw + filter (default 5, short 1)")
    parser.add_argument(
        "--raw-loop", nargs=2, metavar=("NATS_URL", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.raw_loop:
        eventloop.run(raw_loop(args.raw_loop[0], int(args.raw_loop[1])))
        return
    asyncio.run(main(args.short, args.profile, args.rounds))


if __name__ == "__main__":
    cli()
