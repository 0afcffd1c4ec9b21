"""The pieces the runner's scenarios assemble: a nats-server with its monitor port, the
vebus services as real processes, a local HTTP sink, event injection, and waiting and
timing at the sink.

Everything runs as its own process (nats-server, each service, the sink) so that
`/proc/<pid>` gives each one's CPU time and peak RSS; the runner process only injects
events and reads results.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from loadtest.common import jetstream_settings, summary
from loadtest.dispatcher import Sink, _wait_http, cpu_seconds
from loadtest.filter import SAMPLE, _stamp
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.local.embedded import ManagedProcess, free_port, start_nats, start_service
from vebus.names import MSG_ID

_VEBA = json.loads(SAMPLE.read_text(encoding="utf-8"))


def event(n: int, routes: int, *, when: float | None = None) -> tuple[str, bytes, dict[str, str]]:
    """The VEBA VmPoweredOffEvent numbered n, for route `r<n % routes>` (by VM name), with
    `time` = `when` (now by default) so that the sink can tell its end-to-end latency."""
    data = dict(_VEBA["data"])
    data["Key"] = n
    data["Vm"] = {**data["Vm"], "Name": f"vm-{n % routes}"}
    stamp = dt.datetime.fromtimestamp(when or time.time(), dt.UTC)
    ce = CloudEvent(
        id=str(n),
        source=_VEBA["source"],
        type=_VEBA["type"],
        time=stamp.isoformat().replace("+00:00", "Z"),
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
        data=json.dumps(data).encode(),
    )
    return "vebus.events.vc01.VmPoweredOffEvent", ce.data, to_headers(ce, {MSG_ID: f"vc01:1:{n}"})


def routes_yaml(
    nats_url: str,
    sink_url: str,
    routes: int,
    *,
    extra: str = "",
    urls: dict[int, str] | None = None,
) -> str:
    """A config of `routes` webhook routes to one sink, route r<i> taking VM vm-<i>
    (a single route takes everything); `urls` gives some routes another sink."""
    lines = [f"nats: {{url: '{nats_url}'}}", "streams: {route_max_msgs: 2000000}", "routes:"]
    for i in range(routes):
        lines.append(f"  - name: r{i}")
        if routes > 1:
            lines.append(f"    match: {{data: {{Vm: {{Name: [vm-{i}]}}}}}}")
        lines.append(f"    sink: {{kind: webhook, url: '{(urls or {}).get(i, sink_url)}'}}")
    return "\n".join(lines) + "\n" + extra


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process so far (VmHWM, Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Bench:
    """One nats-server (fresh store), a sink, a config, and the services started on it."""

    workdir: Path
    sink_delay: float = 0.0
    #: nats-server config text added to `-js -sd` (e.g. a `jetstream { sync_interval }`)
    nats_conf: str = ""
    nats_proc: ManagedProcess = field(init=False)
    nats_url: str = field(init=False)
    monitor_port: int = field(init=False)
    sink: Sink = field(init=False)
    config: Path = field(init=False)
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    nc: Client | None = None

    async def __aenter__(self) -> Bench:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.monitor_port = free_port()
        extra: list[str] = []
        if self.nats_conf:
            conf = self.workdir / "nats-server.conf"
            conf.write_text(self.nats_conf)
            extra = ["-c", str(conf)]
        self.nats_proc, port = start_nats(
            self.workdir / "nats", http_port=self.monitor_port, extra_args=extra
        )
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.sink = Sink(self.workdir, self.sink_delay)
        self.config = self.workdir / "vebus.yaml"
        self.nc = await nats.connect(self.nats_url)
        return self

    async def __aexit__(self, *_: object) -> None:
        for proc in self.services.values():
            proc.kill()  # measured already: no need to wait for a graceful stop
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.sink.stop()
        self.nats_proc.kill()

    @property
    def js(self) -> Any:
        assert self.nc is not None
        return self.nc.jetstream()

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    async def ensure_streams(self) -> None:
        await ensure_streams(self.js, load_config(self.config).stream_settings())

    async def start(
        self, service: str, name: str | None = None, timeout: float = 120.0
    ) -> ManagedProcess:
        """Start a service process and wait until its /readyz answers 200."""
        name = name or service
        port = free_port()
        proc = start_service(
            service,
            self.config,
            health_port=port,
            log_path=self.workdir / f"{name}.log",
            extra_args=["--log-level", "WARNING"],
        )
        self.services[name] = proc
        await asyncio.to_thread(_wait_http, f"http://127.0.0.1:{port}/readyz", proc, timeout)
        return proc

    def stop(self, name: str) -> None:
        """Stop a service gracefully (SIGTERM: it finishes what it holds)."""
        self.services.pop(name).stop()

    async def inject(self, start: int, count: int, routes: int) -> None:
        """Publish events start..start+count-1 to VEBUS_EVENTS, 500 publishes in flight."""
        batch: list[OutgoingMessage] = []
        for n in range(start, start + count):
            subject, body, headers = event(n, routes)
            batch.append(OutgoingMessage(subject, body, headers))
            if len(batch) == 500:
                await publish_all(self.js, batch)
                batch = []
        if batch:
            await publish_all(self.js, batch)

    async def inject_paced(self, start: int, count: int, rate: float, routes: int) -> None:
        """Publish `count` events at `rate` per second (in ticks of 10 ms)."""
        t0 = time.perf_counter()
        sent = 0
        pending: set[asyncio.Task[Any]] = set()
        while sent < count:
            due = min(count, int((time.perf_counter() - t0) * rate) + 1)
            batch = [OutgoingMessage(*event(n, routes)) for n in range(start + sent, start + due)]
            sent = due
            if batch:
                task = asyncio.create_task(publish_all(self.js, batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)

    async def wait_sink(self, target: int, timeout: float, what: str = "") -> dict[str, float]:
        """Wait until the sink has received `target` requests in all; its stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await asyncio.to_thread(self.sink.stats)
            if stats["count"] >= target:
                return stats
            for name, proc in self.services.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{proc.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what}: the sink got {stats['count']:.0f} of {target} within {timeout:.0f}s"
                )
            await asyncio.sleep(0.1)

    def latencies(self, start: int = 0) -> tuple[list[float], list[float]]:
        """(end-to-end latencies from ce-time, receipt times) of requests from `start` on."""
        lat, recv = [], []
        for _, ce_time, at in self.sink.samples(start):
            if ce_time:
                lat.append(at - _stamp(ce_time))
                recv.append(at)
        return lat, recv

    def cpu(self, *names: str) -> float:
        return cpu_seconds(*(self.services[n].pid for n in names))

    async def settings(self) -> dict[str, Any]:
        assert self.nc is not None
        return await jetstream_settings(self.nc, self.monitor_port)


def rate_of(recv: list[float]) -> float:
    """Events per second between the first and the last receipt."""
    if len(recv) < 2:
        return float("nan")
    return (len(recv) - 1) / (max(recv) - min(recv))


def ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies in milliseconds."""
    s = summary(values)
    return {k: s[k] * 1000 for k in ("p50", "p95", "p99", "max")}
