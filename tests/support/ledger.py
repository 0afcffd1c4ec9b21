"""The chaos harness: `vebus up` as a subprocess, CloudEvents injected into VEBUS_EVENTS,
sinks that record every event id, and the ledger that says what became of each event.

- `UpCluster` runs `vebus up --nats-cluster 3 --scale <service>=2 ...` and finds the
  processes it started through /proc (their parent is `vebus up`; a service replica is
  told apart by its `--health-port`, a NATS node by its `-sd <data dir>/nats-<n>`).
- `SinkHub` serves RecordingSinks from a thread of their own, so that one sink can live
  for a whole test package while each test runs in its own event loop.
- `Producer` publishes events with stable ids and Msg-Ids and keeps trying each one until
  JetStream acknowledges it (a producer that keeps what it could not hand over).
- `Ledger` counts: sent, delivered, lost, duplicated, dead-lettered, faults and recovery
  times; `settle` fills it from the sink and VEBUS_DLQ once the route is quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.ports import free_run
from tests.support.sink import Received, RecordingSink
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import publish
from vebus.errors import PublishError
from vebus.names import MSG_ID

__all__ = [
    "DeadLetterRecord",
    "Fault",
    "Ledger",
    "Producer",
    "Replica",
    "SinkHub",
    "UpCluster",
    "dead_letters",
    "eventually",
    "settle",
    "wait_until",
]

T = TypeVar("T")
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------- the ledger


@dataclass
class Fault:
    """One injected fault and how long the thing it hit took to come back."""

    what: str
    at: float = field(default_factory=time.monotonic)
    #: seconds until the process (or sink) served again; None: not measured or never
    recovered_after: float | None = None

    def recovered(self) -> None:
        self.recovered_after = time.monotonic() - self.at


@dataclass(frozen=True)
class DeadLetterRecord:
    """What the ledger keeps of one dead letter."""

    seq: int
    route: str
    code: str
    event_id: str | None
    attempts: int
    error: str
    #: the original message's Nats-Msg-Id, headers and body
    msg_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Ledger:
    """What became of every event a test sent."""

    name: str
    sent: list[str] = field(default_factory=list)
    delivered: Counter[str] = field(default_factory=Counter)
    dead: dict[str, list[DeadLetterRecord]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    #: the largest max_ack_pending among the consumers the faults hit
    max_ack_pending: int = 0
    #: delivered ids the test never sent (must be none)
    foreign: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    #: the sink's accepted requests before this index belong to earlier tests
    sink_from: int = 0

    sink: RecordingSink | None = None
    settled: bool = False

    def watch(self, sink: RecordingSink) -> None:
        """Count only what `sink` accepts from now on (it may have served other tests)."""
        self.sink = sink
        self.sink_from = len(sink.accepted)

    def finish(self) -> None:
        """For a test that failed before `settle`: count what its sink has, by CloudEvent id."""
        if not self.settled and self.sink is not None:
            self.take_deliveries(
                self.sink.accepted[self.sink_from :], lambda r: r.headers.get("ce-id", "")
            )
            self.note("not settled: the test stopped early; deliveries counted as they were")

    def fault(self, what: str) -> Fault:
        f = Fault(what)
        self.faults.append(f)
        return f

    def note(self, text: str) -> None:
        self.notes.append(text)

    def take_deliveries(self, received: Iterable[Received], key: Callable[[Received], str]) -> None:
        """Count the sink's accepted requests: those of this test, and any others."""
        sent = set(self.sent)
        self.delivered = Counter()
        self.foreign = Counter()
        for r in received:
            k = key(r)
            (self.delivered if k in sent else self.foreign)[k] += 1

    def take_dead_letters(self, records: Iterable[DeadLetterRecord]) -> None:
        """Count these dead letters of this test's events (once each: by their id), also
        after a replay deleted them."""
        sent = set(self.sent)
        for d in records:
            if d.event_id in sent:
                known = self.dead.setdefault(d.event_id, [])
                if all(k.seq != d.seq for k in known):
                    known.append(d)

    @property
    def lost(self) -> list[str]:
        """Sent, acknowledged by VEBUS_EVENTS, and neither delivered nor dead-lettered."""
        return [i for i in self.sent if i not in self.delivered and i not in self.dead]

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each event."""
        return sum(c - 1 for c in self.delivered.values())

    @property
    def dead_lettered(self) -> int:
        return sum(len(v) for v in self.dead.values())

    def dead_codes(self) -> Counter[str]:
        return Counter(d.code for v in self.dead.values() for d in v)

    @property
    def duplicate_bound(self) -> int:
        """Duplicates a run may show: each fault can cost the in-flight window it hit."""
        return len(self.faults) * self.max_ack_pending

    def report(self) -> str:
        self.elapsed = self.elapsed or time.monotonic() - self.started
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.dead_codes().items())) or "-"
        recoveries = [f.recovered_after for f in self.faults if f.recovered_after is not None]
        lines = [
            f"ledger {self.name}: sent {len(self.sent)}, delivered {len(self.delivered)}, "
            f"lost {len(self.lost)}, duplicates {self.duplicates} (bound {self.duplicate_bound}"
            f" = {len(self.faults)} fault(s) x max_ack_pending {self.max_ack_pending}), "
            f"dead-lettered {self.dead_lettered} ({codes}), in {self.elapsed:.1f}s",
        ]
        if self.faults:
            rec = (
                f"recovery min {min(recoveries):.1f}s / max {max(recoveries):.1f}s"
                if recoveries
                else "no recovery measured"
            )
            lines.append(f"  faults: {len(self.faults)}; {rec}")
            for f in self.faults:
                after = f"{f.recovered_after:.1f}s" if f.recovered_after is not None else "-"
                lines.append(f"    +{f.at - self.started:6.1f}s  {f.what}  back after {after}")
        if self.foreign:
            lines.append(f"  foreign deliveries (never sent): {sum(self.foreign.values())}")
        if self.lost:
            lines.append(f"  LOST: {self.lost[:20]}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def check(self, *, dead_letters: bool = False) -> None:
        """lost = 0, nothing foreign, duplicates within the bound, dead letters as expected."""
        assert not self.lost, self.report()
        assert not self.foreign, self.report()
        assert self.duplicates <= self.duplicate_bound, self.report()
        if not dead_letters:
            assert self.dead_lettered == 0, self.report()


# ---------------------------------------------------------------------------- waiting


async def wait_until(
    predicate: Callable[[], bool], timeout: float, *, interval: float = 0.2
) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def eventually(
    predicate: Callable[[], Awaitable[bool]], timeout: float, *, interval: float = 0.5
) -> bool:
    """Await `predicate` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


# ---------------------------------------------------------------------------- dead letters


async def dead_letters(
    js: JetStreamContext, route: str, *, after: int = 0
) -> list[DeadLetterRecord]:
    """Every dead letter stored for `route` (`_invalid` for those never routed)."""
    out: list[DeadLetterRecord] = []
    seq = after + 1
    subject = names.dlq_subject(route)
    while True:
        try:
            raw = await js.get_msg(names.DLQ_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        h = dict(raw.headers or {})
        out.append(
            DeadLetterRecord(
                seq=int(raw.seq or 0),
                route=h.get("vebus-dlq-route", route),
                code=h.get("vebus-dlq-code", ""),
                event_id=h.get("ce-id"),
                attempts=int(h.get("vebus-dlq-attempts", "0") or 0),
                error=h.get("vebus-dlq-error", ""),
                msg_id=h.get("vebus-dlq-msg-id"),
                headers=h,
                body=raw.data or b"",
            )
        )
        seq = int(raw.seq or 0) + 1


async def settle(
    ledger: Ledger,
    js: JetStreamContext,
    sink: RecordingSink,
    route: str,
    *,
    timeout: float,
    key: Callable[[Received], str] | None = None,
    quiet_for: float = 1.0,
) -> None:
    """Wait until every sent event is delivered or dead-lettered and neither the filter's
    consumer nor the route's has anything pending or unacknowledged (so late redeliveries
    and their duplicates are counted), then fill the ledger. Returns after `timeout` either
    way: the ledger then shows what is missing."""
    pick = key or (lambda r: r.headers.get("ce-id", ""))
    durable = names.dispatcher_durable(route)
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while True:
        ledger.take_deliveries(sink.accepted[ledger.sink_from :], pick)
        missing = [i for i in ledger.sent if i not in ledger.delivered]
        if missing:
            ledger.take_dead_letters(await dead_letters(js, route))
        idle = False
        if not ledger.lost:
            with contextlib.suppress(Exception):
                info = await js.consumer_info(names.ROUTES_STREAM, durable)
                flt = await js.consumer_info(names.EVENTS_STREAM, names.FILTER_DURABLE)
                idle = (
                    info.num_pending == 0
                    and info.num_ack_pending == 0
                    and flt.num_pending == 0
                    and flt.num_ack_pending == 0
                )
        if idle:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_for:
                break
        else:
            quiet_since = None
        if time.monotonic() >= deadline:
            ledger.note(f"settle: gave up after {timeout:.0f}s")
            break
        await asyncio.sleep(0.25)
    ledger.take_deliveries(sink.accepted[ledger.sink_from :], pick)
    ledger.take_dead_letters(await dead_letters(js, route))
    ledger.elapsed = time.monotonic() - ledger.started
    ledger.settled = True


# ---------------------------------------------------------------------------- producer


@dataclass
class Producer:
    """Publishes `count` CloudEvents to VEBUS_EVENTS at `rate` per second, each retried
    until JetStream acknowledges it; ids `<prefix>-<n>`, Msg-Ids `chaos:<prefix>:<n>` (so
    a prefix must be unique within the duplicate window, or JetStream drops the events)."""

    js: JetStreamContext
    ledger: Ledger
    source: str
    prefix: str
    count: int
    rate: float
    event_class: str = "ChaosEvent"
    concurrency: int = 32
    #: give up on one event after this long without an ack (the test then fails)
    give_up_after: float = 120.0
    retries: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    acked: int = 0
    #: event id -> when JetStream acknowledged it (time.monotonic)
    acked_at: dict[str, float] = field(default_factory=dict)

    def event(self, n: int) -> tuple[str, bytes, dict[str, str]]:
        event_id = f"{self.prefix}-{n}"
        ev = CloudEvent(
            id=event_id,
            source=self.source,
            type=f"com.example.chaos.{self.event_class}.v0",
            subject=self.event_class,
            data=json.dumps({"n": n, "prefix": self.prefix}).encode(),
        )
        headers = to_headers(ev, {MSG_ID: f"chaos:{self.prefix}:{n}"})
        return names.event_subject("chaos", self.event_class), ev.data, headers

    async def _one(self, n: int, slots: asyncio.Semaphore) -> None:
        subject, body, headers = self.event(n)
        deadline = time.monotonic() + self.give_up_after
        try:
            while True:
                try:
                    await publish(self.js, subject, body, headers, timeout=3.0)
                    break
                except PublishError:
                    if time.monotonic() > deadline:
                        raise
                    self.retries += 1
                    await asyncio.sleep(0.25)
            self.ledger.sent.append(f"{self.prefix}-{n}")
            self.acked_at[f"{self.prefix}-{n}"] = time.monotonic()
            self.acked += 1
        finally:
            slots.release()

    async def run(self) -> None:
        """Publish everything; returns when every event is acknowledged."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks = []
        start = time.monotonic()
        try:
            for n in range(self.count):
                due = start + n / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await slots.acquire()
                tasks.append(asyncio.create_task(self._one(n, slots)))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            self.done.set()
        self.ledger.note(
            f"producer: {self.acked} events in {time.monotonic() - start:.1f}s "
            f"({self.retries} publish retries)"
        )


# ---------------------------------------------------------------------------- sinks


class SinkHub:
    """RecordingSinks served from a thread of their own: they outlive a test's event loop,
    and can be taken down (connection refused) and brought back on the same port."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sinks", daemon=True)
        self._thread.start()
        self.sinks: list[RecordingSink] = []

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, sink: RecordingSink | None = None) -> RecordingSink:
        s = sink or RecordingSink()
        self._call(s.start())
        self.sinks.append(s)
        return s

    def down(self, sink: RecordingSink) -> None:
        """Stop listening: the dispatchers get connection refused."""
        self._call(sink.stop())

    def up(self, sink: RecordingSink) -> None:
        """Listen again on the same port."""
        self._call(sink.start())

    def close(self) -> None:
        for s in self.sinks:
            with contextlib.suppress(Exception):
                self._call(s.stop(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------------------- vebus up


@dataclass(frozen=True)
class Replica:
    """One service process `vebus up` runs (restarted with the same arguments)."""

    label: str
    service: str
    health_port: int


def _proc_args(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1])


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


_REPLICA_LINE = re.compile(r"^vebus up: (?P<label>\S+)\s+http://127\.0\.0\.1:(?P<port>\d+)/readyz")


class UpCluster:
    """`vebus up --nats-cluster <nodes> --scale <service>=<replicas>` as a subprocess."""

    SERVICES = ("collector", "filter", "dispatcher", "deadletter")

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str],
        nodes: int = 3,
        replicas: int = 2,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.config = dict(config)
        self.env = dict(env)
        self.nodes = nodes
        self.replicas_per_service = replicas
        self.config_path = workdir / "chaos.yaml"
        self.data = (workdir / "data").resolve()
        self.log_path = workdir / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nats_port = 0
        self.vcsim_port = 0
        self.replicas: list[Replica] = []

    # -------------------------------------------------------------- lifecycle

    @property
    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.nats_port + i}" for i in range(self.nodes)]

    @property
    def effective_config(self) -> Path:
        """The config `vebus up` gave the services (NATS URLs, the simulator's vCenter)."""
        return self.data / "vebus.yaml"

    @property
    def vcsim_url(self) -> str:
        return f"http://127.0.0.1:{self.vcsim_port}/sdk"

    def start(self, timeout: float = 180.0, attempts: int = 2) -> None:
        """Start, and wait until every replica is ready; on a busy machine a port can be
        taken under `vebus up`'s feet, so a failed start is tried again on other ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start(timeout)
                return
            except AssertionError:
                self.stop(timeout=30)
                if attempt == attempts:
                    raise
                # kept for a post-mortem, out of the next attempt's way
                self.log_path.rename(self.log_path.with_suffix(f".failed{attempt}.log"))
                if self.data.exists():
                    self.data.rename(self.data.with_name(f"data.failed{attempt}"))

    def _start(self, timeout: float) -> None:
        self.nats_port = free_run(self.nodes)
        self.vcsim_port = free_run(1)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        args = [
            str(BIN / "vebus"), "up", "--config", str(self.config_path),
            "--data-dir", str(self.data), "--nats-cluster", str(self.nodes),
            "--nats-port", str(self.nats_port), "--vcsim-port", str(self.vcsim_port), "--quiet",
        ]  # fmt: skip
        for name in self.SERVICES:
            args += ["--scale", f"{name}={self.replicas_per_service}"]
        args += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout
        self._wait_for_text("press Ctrl-C to stop", deadline)
        self.replicas = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if m := _REPLICA_LINE.match(line):
                label = m.group("label")
                service = label.rsplit("-", 1)[0] if label[-1].isdigit() else label
                if service in self.SERVICES:  # vebus up also runs those with no role here
                    self.replicas.append(Replica(label, service, int(m.group("port"))))
        expected = len(self.SERVICES) * self.replicas_per_service
        assert len(self.replicas) == expected, self.up_log()[-3000:]
        for r in self.replicas:
            self.wait_ready(r, deadline - time.monotonic())

    def _wait_for_text(self, text: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if text in self.up_log():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"vebus up exited ({self.proc.returncode}):\n{self.up_log()}")
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not printed in time:\n{self.up_log()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ctrl-C; anything still running after `timeout` is killed. Returns the status."""
        if self.proc is None:
            return None
        children = {pid: _proc_args(pid) for pid in self.children()}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, args in children.items():  # left stopped or orphaned: make sure
            if args and _proc_args(pid) == args:  # still ours, not a reused PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        return self.proc.returncode

    # -------------------------------------------------------------- processes

    def children(self) -> list[int]:
        """The processes `vebus up` started (services, NATS nodes, the simulator)."""
        assert self.proc is not None
        me = self.proc.pid
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent(int(entry.name)) == me:
                out.append(int(entry.name))
        return out

    def pid_of(self, replica: Replica) -> int | None:
        """The live PID of a service replica (None between a death and its restart)."""
        for pid in self.children():
            args = _proc_args(pid)
            if (
                f"vebus_{replica.service}" in args
                and "--health-port" in args
                and args[args.index("--health-port") + 1] == str(replica.health_port)
                and _state(pid) not in (None, "Z")
            ):
                return pid
        return None

    def node_pid(self, n: int) -> int | None:
        """The live PID of NATS node `n` (1-based)."""
        store = str(self.data / f"nats-{n}")
        for pid in self.children():
            args = _proc_args(pid)
            if "-sd" in args and args[args.index("-sd") + 1] == store and _state(pid) != "Z":
                return pid
        return None

    def vcsim_pid(self) -> int | None:
        for pid in self.children():
            args = _proc_args(pid)
            if args and args[0].endswith("vcsim") and _state(pid) != "Z":
                return pid
        return None

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.replicas if r.service == service]

    # -------------------------------------------------------------- health

    @staticmethod
    def readyz(replica: Replica) -> dict[str, Any] | None:
        """The replica's /readyz body when it answers 200, else None."""
        url = f"http://127.0.0.1:{replica.health_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    body: dict[str, Any] = json.loads(r.read())
                    return body
        except (OSError, ValueError):
            pass
        return None

    def wait_ready(self, replica: Replica, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.readyz(replica) is not None:
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{replica.label} not ready in time; its log:\n{self.log(replica.label)[-3000:]}"
        )

    def all_ready(self) -> bool:
        return all(self.readyz(r) is not None for r in self.replicas)

    async def wait_all_ready(self, timeout: float = 90.0) -> None:
        if not await wait_until(self.all_ready, timeout, interval=0.5):
            bad = [r.label for r in self.replicas if self.readyz(r) is None]
            raise AssertionError(f"not ready after {timeout:.0f}s: {bad}")

    # -------------------------------------------------------------- logs

    def up_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log(self, name: str) -> str:
        try:
            return (self.data / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def all_logs(self) -> dict[str, bytes]:
        """Every log file of the run, raw: `vebus up`'s own and each process's."""
        out = {"up": self.log_path.read_bytes() if self.log_path.exists() else b""}
        for p in sorted((self.data / "logs").glob("*.log")):
            out[p.stem] = p.read_bytes()
        return out

    def restarts(self, label: str) -> int:
        """How many times `vebus up` reported `label` exiting."""
        return self.up_log().count(f"vebus up: {label} exited")
