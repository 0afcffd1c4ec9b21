"""Power loss: every NATS node of a three-node cluster loses power at once.

SIGKILL leaves a killed nats-server's writes in the kernel's page cache, where they reach
the disk anyway, so it cannot show what a power cut does. Here the nodes store on powerfs
(tests/support/powerfs.py), a FUSE layer that holds written data in memory until fsync
and drops it on `cut`: the nodes are frozen (SIGSTOP), the unsynced data dropped, the nodes
killed and started again on what was synced.

- sync_interval default (nats-server's 2 minutes): JetStream acknowledges writes that only
  a page cache holds, and a power loss of every node loses them (Jepsen, NATS 2.12). The
  test requires that this happens (so the layer is shown to bite) and prints how much.
- `sync_interval: always` (`vebus up --nats-sync-interval always`): every acknowledged
  event is delivered after the cut (ledger lost = 0).

The short forms: the default on a bare three-node cluster (VEBUS_EVENTS as the services
create it; the ledger counts what the stream still holds), `always` through the whole
vebus topology (`vebus up --nats-cluster 3`, one replica per service; the ledger counts what
the sink received). The long forms run both through the whole topology with more events.
The services are not cut: they stand for processes on other machines, which reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.ledger import Ledger, Producer, SinkHub, UpCluster, eventually, settle
from tests.support.ports import free_run
from tests.support.powerfs import PowerFs, available
from tests.support.sink import RecordingSink
from tests.support.streams import read_stream
from vebus import names
from vebus.bus.streams import StreamSettings, ensure_streams
from vebus.local.embedded import ManagedProcess, free_port, start_nats

pytestmark = pytest.mark.chaos

ROUTE = "power"
SOURCE = "https://chaos.example/power"
NODES = 3


@dataclass(frozen=True)
class Form:
    sync: str  # "default" or "always"
    topology: str  # "bare": nats-server only; "vebus": vebus up with every service
    events: int
    rate: float


FORMS = [
    pytest.param(Form("default", "bare", 400, 200), id="default-bare-short"),
    pytest.param(Form("always", "vebus", 300, 100), id="always-vebus-short"),
    pytest.param(
        Form("default", "vebus", 2000, 200), id="default-vebus-long", marks=pytest.mark.slow
    ),
    pytest.param(
        Form("always", "vebus", 2000, 200), id="always-vebus-long", marks=pytest.mark.slow
    ),
]


@pytest.fixture
def powerfs(tmp_path: Path) -> Iterator[PowerFs]:
    why = available()
    if why is not None:
        pytest.skip(f"power loss needs a FUSE mount: {why}")
    fs = PowerFs(tmp_path / "power")
    try:
        fs.start()
    except RuntimeError as e:
        pytest.skip(f"power loss needs a FUSE mount, and it failed here: {e}")
    try:
        yield fs
    finally:
        fs.stop()


async def _client(servers: list[str]) -> Client:
    return await nats.connect(
        servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        allow_reconnect=True, connect_timeout=2,
    )  # fmt: skip


async def stored_ids(js: JetStreamContext, stream: str, subject: str) -> set[str]:
    """The CloudEvent ids of every message on `subject` in `stream` (none if it is gone),
    as its leader has them."""
    msgs = await read_stream(js, stream, subject, direct=False)
    return {i for m in msgs if m.headers and (i := m.headers.get("ce-id"))}


async def streams_answer(js: JetStreamContext, *, gone_counts: bool = False) -> bool:
    """Whether VEBUS_EVENTS and VEBUS_ROUTES have a leader again (`gone_counts`: or the
    cluster says they no longer exist, as after it lost its own metadata)."""
    for stream in (names.EVENTS_STREAM, names.ROUTES_STREAM):
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            if gone_counts:
                continue
            return False
        except Exception:
            return False
        if info.cluster is None or info.cluster.leader is None:
            return False
    return True


def freeze_cut_kill(fs: PowerFs, pids: list[int]) -> int:
    """Every node loses power at once: frozen, its unsynced writes dropped, killed."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    dropped = fs.cut()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return dropped


# ---------------------------------------------------------------------------- bare cluster


class BareCluster:
    """Three nats-server processes as one JetStream cluster, stores on `root`."""

    def __init__(self, root: Path, logs: Path, sync: str) -> None:
        self.port = free_run(NODES)
        routes_ports = [free_port() for _ in range(NODES)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in routes_ports)
        conf = logs / "sync.conf"
        conf.write_text(
            f'jetstream {{\n  sync_interval: "{sync}"\n}}\n' if sync != "default" else ""
        )
        self.args = [
            [
                "-c", str(conf), "-n", f"vebus-{i + 1}", "--cluster_name", "vebus",
                "--cluster", f"nats://127.0.0.1:{routes_ports[i]}", "--routes", routes,
            ]
            for i in range(NODES)
        ]  # fmt: skip
        self.root, self.logs = root, logs
        self.procs: list[ManagedProcess] = []

    @property
    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.port + i}" for i in range(NODES)]

    def start(self) -> None:
        self.procs = [
            start_nats(self.root / f"nats-{i + 1}", port=self.port + i,
                       log_path=self.logs / f"nats-{i + 1}.log", extra_args=self.args[i])[0]
            for i in range(NODES)
        ]  # fmt: skip

    def restart(self) -> None:
        for p in self.procs:
            p.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.kill()


async def _bare(form: Form, fs: PowerFs, tmp_path: Path, led: Ledger) -> None:
    cluster = BareCluster(fs.mountpoint, tmp_path, form.sync)
    cluster.start()
    nc: Client | None = None
    try:
        nc = await _client(cluster.servers)
        js = nc.jetstream()
        settings = StreamSettings(replicas=NODES)
        assert await eventually(lambda: _try(ensure_streams(js, settings)), 60)
        producer = Producer(js, led, source=SOURCE, prefix=f"pw{time.time_ns()}",
                            count=form.events, rate=form.rate)  # fmt: skip
        await producer.run()
        before = await stored_ids(js, names.EVENTS_STREAM, names.EVENTS_SUBJECTS)
        fault = led.fault(f"power cut of all {NODES} nodes (sync_interval {form.sync})")
        dropped = await asyncio.to_thread(freeze_cut_kill, fs, cluster.pids())
        await nc.close()
        nc = None
        cluster.restart()
        nc = await _client(cluster.servers)
        js = nc.jetstream()
        back = await eventually(lambda: streams_answer(js, gone_counts=True), 60)
        fault.recovered()
        after = await stored_ids(js, names.EVENTS_STREAM, names.EVENTS_SUBJECTS) if back else set()
        exists = await _try(js.stream_info(names.EVENTS_STREAM))
        sent = set(led.sent)
        led.delivered.update({i: 1 for i in after & sent})
        led.settled = True
        led.note(
            f"VEBUS_EVENTS held {len(before & sent)} of {len(sent)} acknowledged events before "
            f"the cut and {len(after & sent)} after (the stream "
            f"{'answering' if exists else 'gone' if back else 'not answering'} after the "
            "restart); powerfs dropped "
            f"{dropped} unsynced bytes"
        )
        assert before >= sent, "JetStream acknowledged events it does not hold"
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        cluster.stop()


async def _try(coro: Any) -> bool:
    try:
        await coro
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------- vebus up


def _config(sink: RecordingSink) -> dict[str, Any]:
    return {
        "routes": [
            {"name": "console", "match": {"source": ["nothing"]}, "sink": {"kind": "console"}},
            {
                "name": ROUTE,
                "match": {"source": [SOURCE]},
                "sink": {"kind": "webhook", "url": f"http://127.0.0.1:{sink.port}/events"},
                "delivery": {
                    "max_attempts": 1000,
                    "timeout": "2s",
                    "backoff": {"initial": "200ms", "max": "2s"},
                },
            },
        ]
    }


@contextlib.asynccontextmanager
async def _up(form: Form, fs: PowerFs, tmp_path: Path, sink: RecordingSink,
              vcsim_binary: Path) -> AsyncIterator[tuple[UpCluster, JetStreamContext]]:  # fmt: skip
    work = tmp_path / "up"
    data = work / "data"
    data.mkdir(parents=True)
    for n in range(1, NODES + 1):  # the nodes' stores on powerfs; logs and config not
        (fs.mountpoint / f"nats-{n}").mkdir()
        (data / f"nats-{n}").symlink_to(fs.mountpoint / f"nats-{n}")
    extra = ["--nats-sync-interval", form.sync] if form.sync != "default" else []
    cluster = UpCluster(work, _config(sink), env={"VEBUS_VCSIM": str(vcsim_binary)},
                        nodes=NODES, replicas=1, extra_args=extra)  # fmt: skip
    nc: Client | None = None
    try:
        await asyncio.to_thread(cluster.start)
        nc = await _client(cluster.servers)
        yield cluster, nc.jetstream()
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        status = await asyncio.to_thread(cluster.stop)
        print(f"\nvebus up exited with status {status}; logs in {work}")


async def _vebus(form: Form, fs: PowerFs, tmp_path: Path, led: Ledger, vcsim_binary: Path) -> None:
    hub = SinkHub()
    try:
        sink = hub.add()
        led.watch(sink)
        async with _up(form, fs, tmp_path, sink, vcsim_binary) as (cluster, js):
            # the sink is down: the events wait in VEBUS_ROUTES when the power goes
            hub.down(sink)
            producer = Producer(js, led, source=SOURCE, prefix=f"pw{time.time_ns()}",
                                count=form.events, rate=form.rate)  # fmt: skip
            producing = asyncio.create_task(producer.run())
            await eventually(lambda: _true(producer.acked >= form.events // 2), 60, interval=0.05)
            fault = led.fault(f"power cut of all {NODES} nodes (sync_interval {form.sync})")
            pids = [p for n in range(1, NODES + 1) if (p := cluster.node_pid(n)) is not None]
            assert len(pids) == NODES
            acked_at_cut = producer.acked
            dropped = await asyncio.to_thread(freeze_cut_kill, fs, pids)
            gone_counts = form.sync == "default"  # the cluster may have lost the streams
            back = await eventually(lambda: _restarted(cluster, js, pids, gone_counts), 120)
            if back:
                fault.recovered()
            if form.sync == "default":
                # what was acknowledged before the cut is the ledger; publishing on into
                # streams that may be gone (the running services create them only at
                # start) would only wait
                producing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producing
                exists = await _try(js.stream_info(names.EVENTS_STREAM))
                reasons = {r.label: _why(r.health_port) for r in cluster.replicas}
                led.note(
                    f"after the restart VEBUS_EVENTS {'exists' if exists else 'is gone'}; "
                    f"replicas: {reasons}"
                )
            else:
                await producing
            held = await stored_ids(js, names.EVENTS_STREAM, names.EVENTS_SUBJECTS)
            hub.up(sink)
            led.note(
                f"cut after {acked_at_cut} acknowledged events; powerfs dropped {dropped} "
                f"unsynced bytes; afterwards VEBUS_EVENTS holds {len(held & set(led.sent))} "
                f"of the {len(led.sent)} acknowledged"
            )
            if form.sync == "always":
                await settle(led, js, sink, ROUTE, timeout=180)
            else:  # what is lost never comes: wait until deliveries stop
                await _quiet(led, sink, quiet_for=10, timeout=120)
    finally:
        hub.close()


def _why(port: int) -> str:
    """`ready`, or the reason the replica's /readyz gives for not being ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return "ready" if r.status == 200 else str(r.status)
    except urllib.error.HTTPError as e:
        return str(json.loads(e.read() or b"{}").get("reason", e.code))
    except (OSError, ValueError) as e:
        return repr(e)


async def _true(value: bool) -> bool:
    return value


async def _restarted(
    cluster: UpCluster, js: JetStreamContext, old: list[int], gone_counts: bool = False
) -> bool:
    pids = [cluster.node_pid(n) for n in range(1, NODES + 1)]
    if any(p is None or p in old for p in pids):
        return False
    return await streams_answer(js, gone_counts=gone_counts)


async def _quiet(led: Ledger, sink: RecordingSink, *, quiet_for: float, timeout: float) -> None:
    """Count deliveries until none has come for `quiet_for` seconds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(sink.accepted)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            break
        await asyncio.sleep(0.5)
    led.take_deliveries(sink.accepted[led.sink_from :], lambda r: r.headers.get("ce-id", ""))
    led.settled = True


# ---------------------------------------------------------------------------- the test


@pytest.mark.parametrize("form", FORMS)
async def test_power_loss_of_every_node(
    form: Form, powerfs: PowerFs, tmp_path: Path, vcsim_binary: Path,
    ledger: Any,
) -> None:  # fmt: skip
    led: Ledger = ledger(f"power loss, sync_interval {form.sync} ({form.topology}, "
                         f"{form.events} events)")  # fmt: skip
    led.max_ack_pending = 0  # a power cut may redeliver what was in flight: counted below
    if form.topology == "bare":
        await _bare(form, powerfs, tmp_path, led)
    else:
        await _vebus(form, powerfs, tmp_path, led, vcsim_binary)
    assert led.sent, led.report()
    if form.sync == "always":
        assert not led.lost, led.report()
        assert not led.foreign, led.report()
    else:
        # Jepsen's finding, reproduced: acknowledged events gone after every node lost
        # power. If this fails, nats-server now syncs by default: revisit docs/guarantees.md
        assert led.lost, "no acknowledged event was lost with the default sync_interval:\n" + (
            led.report()
        )
