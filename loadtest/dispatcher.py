"""Dispatcher throughput: one dispatcher against a raw POST loop, and 1, 2, 4 replicas.

`uv run python -m loadtest.dispatcher [--short]`

1. One dispatcher delivering a route's backlog to a local HTTP sink that answers at once
   (keep-alive), against a raw aiohttp POST loop with the same concurrency (the route's
   default max_in_flight, 16), the same body and headers, in the same run: the ratio is
   the dispatcher's overhead (NATS fetch, parse, ack). A loop that opens a new connection
   per request is measured too: it is why each sink keeps its connections alive.
2. 1, 2 and 4 dispatcher replicas against a sink that answers after 20 ms, each at its
   default max_in_flight: 16 in flight per replica bounds one at 800 events/s, so 4
   should approach 4x.

Each dispatcher run pre-loads the route with its consumer paused, starts the replicas,
waits until all are ready, then resumes the consumer and times the backlog's delivery
(at the sink). The sink is a minimal asyncio HTTP/1.1 server in its own process, cheap
enough to leave the two cores of a small machine to what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import nats

from loadtest.common import RESULTS, print_table, write_results
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.http import to_binary
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.streams import ensure_consumer, ensure_streams
from vebus.config import load_config
from vebus.delivery.consumers import route_consumer_config
from vebus.local.embedded import ManagedProcess, free_port, start_nats, start_service
from vebus.names import MSG_ID, ROUTES_STREAM, dispatcher_durable, route_subject

ROUTE = "load"
CONCURRENCY = 16  # the default max_in_flight
#: requests whose (ce-id, ce-time, receipt time) the sink keeps, for latencies
MAX_SAMPLES = 400_000
SAMPLE = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "veba" / "veba-VmPoweredOffEvent.json"
)


# ------------------------------------------------------------------------------ the sink


class _SinkProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length bodies only; GET /stats answers counts."""

    stats = {"count": 0, "first": 0.0, "last": 0.0}
    samples: list[tuple[str, str, float]] = []
    delay = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).lower()
            length = 0
            if (i := head.find(b"content-length:")) >= 0:
                length = int(
                    head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]
                )
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            if head.startswith(b"get /stats"):
                body = json.dumps(self.stats).encode()
                self._answer(body)
                continue
            if head.startswith(b"get /samples"):
                # /samples?from=N: [ce-id, ce-time, receipt time] of requests N and on
                start = int(head.split(b"from=", 1)[1].split(b" ", 1)[0]) if b"from=" in head else 0
                body = json.dumps(self.samples[start:]).encode()
                self._answer(body)
                continue
            now = time.time()
            s = self.stats
            s["count"] += 1
            s["first"] = s["first"] or now
            s["last"] = now
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append((_header(head, b"ce-id:"), _header(head, b"ce-time:"), now))
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer, b"ok")
            else:
                self._answer(b"ok")

    def _answer(self, body: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip


def _header(head: bytes, name: bytes) -> str:
    """A header's value from a lower-cased request head ("" if absent)."""
    i = head.find(b"\r\n" + name)
    if i < 0:
        return ""
    j = head.find(b"\r\n", i + 2)
    return head[i + 2 + len(name) : j if j > 0 else None].strip().decode("latin-1")


async def _serve_sink(port: int, delay: float) -> None:
    _SinkProtocol.delay = delay
    server = await asyncio.get_running_loop().create_server(_SinkProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class Sink:
    """The sink process, its URL, and its counters."""

    def __init__(self, workdir: Path, delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        args = [sys.executable, "-m", "loadtest.dispatcher", "--serve-sink", str(self.port),
                "--delay", str(delay)]  # fmt: skip
        self.proc = ManagedProcess(f"sink-{delay}", args, workdir / f"sink-{delay}.log").start()
        _wait_http(f"http://127.0.0.1:{self.port}/stats", self.proc)

    def stats(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def samples(self, start: int = 0) -> list[tuple[str, str, float]]:
        """(ce-id, ce-time, receipt time) of the requests from the `start`-th on."""
        url = f"http://127.0.0.1:{self.port}/samples?from={start}"
        with urllib.request.urlopen(url, timeout=30) as r:
            # the sink lower-cases the request head: ISO 8601 wants its T and Z back
            return [(i, t.upper(), at) for i, t, at in json.loads(r.read())]

    def stop(self) -> None:
        self.proc.kill()


def row(what: str, per_s: float, cpu: float | None = None) -> dict[str, Any]:
    """One line of the first table."""
    return {"what": what, "events_per_s": per_s, "dispatcher_cpu_us": "-" if cpu is None else cpu}


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time the processes used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _wait_http(url: str, proc: ManagedProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready in {timeout}s:\n{proc.output()[-3000:]}")


# ------------------------------------------------------------------------------ the event


def sample_event(n: int) -> CloudEvent:
    veba = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return CloudEvent(
        id=f"{n}",
        source=veba["source"],
        type=veba["type"],
        time=veba["time"],
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
        data=json.dumps(veba["data"]).encode(),
    )


# ------------------------------------------------------------------------------ raw loop


async def raw_post_loop(url: str, count: int, *, keepalive: bool = True) -> float:
    """Events/s of `count` POSTs from CONCURRENCY workers over one aiohttp session."""
    headers, body = to_binary(sample_event(0))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=not keepalive)
    async with aiohttp.ClientSession(connector=connector) as session:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))  # warm-up connections
        left = count
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------ dispatchers


async def dispatcher_run(
    workdir: Path,
    nats_url: str,
    sink: Sink,
    replicas: int,
    count: int,
    others: tuple[int, ...],
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Events/s of `replicas` dispatchers delivering a pre-loaded backlog of `count`."""
    run = workdir / f"r{replicas}-{time.monotonic_ns()}"
    run.mkdir()
    config = run / "vebus.yaml"
    config.write_text(
        f"nats: {{url: '{nats_url}'}}\n"
        f"routes:\n  - name: {ROUTE}\n    sink: {{kind: webhook, url: '{sink.url}'}}\n"
    )
    cfg = load_config(config)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    procs: list[ManagedProcess] = []
    try:
        await ensure_streams(js, cfg.stream_settings())
        await js.purge_stream(ROUTES_STREAM)
        durable = dispatcher_durable(ROUTE)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(ROUTES_STREAM, durable)
        await ensure_consumer(
            js, ROUTES_STREAM, route_consumer_config(cfg.route(ROUTE), dispatcher_durable(ROUTE))
        )
        await js.pause_consumer(ROUTES_STREAM, durable, "2999-01-01T00:00:00Z")
        batch = []
        for n in range(count):
            ev = sample_event(n)
            headers = to_headers(ev, {MSG_ID: f"{run.name}:{n}"})
            batch.append(OutgoingMessage(route_subject(ROUTE), ev.data, headers))
            if len(batch) == 500:
                await publish_all(js, batch)
                batch = []
        if batch:
            await publish_all(js, batch)
        for i in range(replicas):
            port = free_port()
            log_path = run / f"dispatcher-{i}.log"
            if profile_dir is None:
                proc = start_service("dispatcher", config, health_port=port, log_path=log_path)
            else:
                out = profile_dir / f"dispatcher-{replicas}x-{i}.txt"
                args = [
                    sys.executable,
                    "-m",
                    "pyinstrument",
                    "-r",
                    "text",
                    "--show-all",
                    "-o",
                    str(out),
                    "-m",
                    "vebus_dispatcher",
                    "--config",
                    str(config),
                    "--health-port",
                    str(port),
                ]
                proc = ManagedProcess("dispatcher", args, log_path).start()  # fmt: skip
            proc.name = f"dispatcher-{i}:{port}"
            procs.append(proc)
        for p in procs:
            port = int(p.name.rsplit(":", 1)[1])
            await asyncio.to_thread(_wait_http, f"http://127.0.0.1:{port}/readyz", p)
        info = await js.consumer_info(ROUTES_STREAM, durable)
        assert info.paused, "the consumer lost its pause: the measurement would be skewed"
        before = sink.stats()["count"]
        mine = tuple(p.pid for p in procs)
        cpu0, other0 = cpu_seconds(*mine), cpu_seconds(*others)
        await js.resume_consumer(ROUTES_STREAM, durable)
        t0 = time.time()
        deadline = time.monotonic() + max(60.0, count / 100)
        while True:
            stats = await asyncio.to_thread(sink.stats)
            if stats["count"] - before >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['count'] - before}/{count} delivered")
            await asyncio.sleep(0.05)
        # from the first delivery to the last: the pull loops' start (a paused consumer's
        # pull requests wait out their expiry) is not the dispatcher's throughput
        recv = [at for _, _, at in await asyncio.to_thread(sink.samples, int(before))]
        took = (max(recv) - min(recv)) * count / (count - 1) if len(recv) == count else (
            stats["last"] - t0)  # fmt: skip
        cpu, other = cpu_seconds(*mine) - cpu0, cpu_seconds(*others) - other0
        return {
            "replicas": replicas,
            "events": count,
            "seconds": took,
            "events_per_s": count / took,
            # CPU per event: the dispatchers, and nats-server + the sink
            "dispatcher_cpu_us": cpu / count * 1e6,
            "nats_sink_cpu_us": other / count * 1e6,
        }
    finally:
        for p in procs:
            if profile_dir is None:
                p.kill()  # measured already: no need to wait for a graceful stop
            else:
                p.stop()  # the profiler writes its report on a graceful exit
        await nc.close()


# ------------------------------------------------------------------------------ main


async def main(short: bool, profile: bool) -> dict[str, Any]:
    scale = 0.35 if short else 1.0
    results: dict[str, Any] = {"short": short}
    profile_dir = RESULTS / "profiles" if profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vebus-load-") as tmp:
        workdir = Path(tmp)
        nats_proc, nats_port = start_nats(workdir / "nats")
        nats_url = f"nats://127.0.0.1:{nats_port}"
        fast, slow = Sink(workdir, 0.0), Sink(workdir, 0.02)
        try:
            n = int(20000 * scale)
            raw_close = await raw_post_loop(fast.url, int(n / 4), keepalive=False)
            others = (nats_proc.pid, fast.proc.pid)
            pairs = []  # (raw loop, dispatcher), alternated: the machine's load drifts
            for _ in range(2 if short else 3):
                raw = await raw_post_loop(fast.url, n)
                one = await dispatcher_run(workdir, nats_url, fast, 1, n, others, profile_dir)
                pairs.append((raw, one))
            raw_last = await raw_post_loop(fast.url, n)
            ratios = sorted(
                one["events_per_s"]
                / ((raw + (pairs[i + 1][0] if i + 1 < len(pairs) else raw_last)) / 2)
                for i, (raw, one) in enumerate(pairs)
            )
            ratio = statistics.median(ratios)
            rows = [row("raw aiohttp POST loop, new connection each", raw_close)]
            for raw, one in pairs:
                rows.append(row("raw aiohttp POST loop, keep-alive", raw))
                rows.append(row("one dispatcher", one["events_per_s"], one["dispatcher_cpu_us"]))
            rows.append(row("raw aiohttp POST loop, keep-alive", raw_last))
            print_table(f"sink answers at once, {CONCURRENCY} in flight", rows)
            print(
                f"dispatcher / raw loop (each run against the raw runs around it): "
                f"{', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f} (goal >= 0.5)"
            )
            results["fast"] = {
                "raw_new_connection": raw_close,
                "pairs": [{"raw": raw, "dispatcher": one} for raw, one in pairs],
                "raw_last": raw_last,
                "ratios": ratios,
                "ratio": ratio,
            }

            per = {}
            for replicas in (1, 2, 4):
                count = int(4000 * replicas * scale)
                per[replicas] = await dispatcher_run(
                    workdir, nats_url, slow, replicas, count, (nats_proc.pid, slow.proc.pid),
                    profile_dir,
                )  # fmt: skip
            scaling = per[4]["events_per_s"] / per[1]["events_per_s"]
            print_table("sink answers after 20 ms, default max_in_flight (16) per replica",
                        [{**r, "x_one": r["events_per_s"] / per[1]["events_per_s"]}
                         for r in per.values()])  # fmt: skip
            print(f"4 replicas / 1: {scaling:.2f} (goal >= 3.2)")
            four = per[4]
            need = (four["dispatcher_cpu_us"] + four["nats_sink_cpu_us"]) * 1e-6
            print(
                f"CPU per event at 4 replicas: {four['dispatcher_cpu_us']:.0f} us dispatcher + "
                f"{four['nats_sink_cpu_us']:.0f} us nats-server and sink: {os.cpu_count()} "
                f"core(s) carry at most {(os.cpu_count() or 1) / need:,.0f} events/s"
            )
            results["replicas"] = {"runs": list(per.values()), "ratio_4_1": scaling}
        finally:
            fast.stop()
            slow.stop()
            nats_proc.kill()
    path = write_results("dispatcher-short" if short else "dispatcher", results)
    print(f"\nwritten to {path}")
    return results


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.dispatcher", description=__doc__)
    p.add_argument("--short", action="store_true", help="about a third of the events")
    p.add_argument("--profile", action="store_true", help="run each dispatcher under pyinstrument")
    p.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_sink:
        asyncio.run(_serve_sink(a.serve_sink, a.delay))
        return
    asyncio.run(main(a.short, a.profile))


if __name__ == "__main__":
    cli()
