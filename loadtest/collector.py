"""The collector against the vCenter simulator, next to a raw pyvmomi loop, in one run.

    uv run python -m loadtest.collector [--short] [--events N] [--page-sizes 20,50,100,200]

For each page size, one simulator: first a raw pyvmomi reader (its own process:
WaitForUpdatesEx on `latestPage` with the same page size, keeping keys newer than the last
seen, nothing else), then the collector (the real service process, one vCenter, `start:
latest`) follow it while `--posters` threads post `--events` GeneralUserEvents as fast as
the simulator takes them. One after the other, not at once: vcsim 0.24 delivers property
updates to one session only (the last to start WaitForUpdatesEx).

Reported per reader: events seen, the rate (events / time from the first post to the
last one seen or stored), and the lag from PostEvent's return to the event being seen
(raw) or stored in VEBUS_EVENTS (collector: the stream's own timestamp, i.e. the publish
ack), p50 and p99; then collector / raw ratios.

Also measured (the collector's ingest bound, issue 4): publishing the same events with
`asyncio.gather` over batches of 256 synchronous publishes (the old path) against
JetStreamPublisher's async publishes with a bounded window; and, without --short, the
time a standby replica takes to become active after the active one is SIGKILLed.

Results: loadtest/results/collector.json (`--short`: collector-short.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import yaml
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from loadtest.common import print_table, summary, write_results
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.local.embedded import (
    ManagedProcess,
    free_port,
    start_nats,
    start_service,
    start_vcsim,
    vcsim_binary,
)
from vebus.names import EVENTS_STREAM

REPO = Path(__file__).resolve().parents[1]
MARK = "lt-"


# ------------------------------------------------------------------ the simulator side


def _connect(url: str) -> Any:
    from pyVim.connect import SmartConnect

    parts = urlsplit(url)
    return SmartConnect(
        host=parts.hostname, port=parts.port, user="user", pwd="pass", protocol="http"
    )


def _post_all(url: str, count: int, posters: int) -> tuple[dict[int, float], float, float]:
    """Post `count` events from `posters` threads; (post-return time by n, start, end)."""
    from pyVmomi import vim

    posted: dict[int, float] = {}
    lock = threading.Lock()
    sessions = [_connect(url) for _ in range(posters)]

    def worker(t: int) -> None:
        em = sessions[t].content.eventManager
        for n in range(t, count, posters):
            em.PostEvent(
                vim.event.GeneralUserEvent(
                    message=f"{MARK}{n}",
                    createdTime=dt.datetime.now(dt.UTC),
                    key=0,
                    chainId=0,
                    userName="",
                )
            )
            now = time.time()
            with lock:
                posted[n] = now

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(posters)]
    start = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    end = time.time()
    from pyVim.connect import Disconnect

    for si in sessions:
        Disconnect(si)
    return posted, start, end


def raw_reader(
    url: str, page_size: int, expect: int, out: Path, idle: float, limit: float = 120.0
) -> None:
    """The baseline: WaitForUpdatesEx on latestPage, new keys only; writes seen times
    (after `idle` seconds without a new key, or `limit` seconds after the first one)."""
    from pyVmomi import vim, vmodl

    si = _connect(url)
    em = si.content.eventManager
    col = em.CreateCollectorForEvents(vim.event.EventFilterSpec(maxCount=page_size))
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=col)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.event.EventHistoryCollector, pathSet=["latestPage"]
            )
        ],
    )
    pc.CreateFilter(spec, partialUpdates=True)
    seen: dict[int, float] = {}
    # SIGTERM (the runner giving up on a reader that fell too far behind, e.g. decoding a
    # page of 1,000 per event) still writes what was seen
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _raw_follow(pc, expect, idle, limit, seen)
    finally:
        out.write_text(json.dumps(seen))


def _raw_follow(pc: Any, expect: int, idle: float, limit: float, seen: dict[int, float]) -> None:
    from pyVmomi import vmodl

    version, last = "", None
    print("ready", flush=True)
    quiet_since = time.time()
    first: float | None = None
    while (
        len(seen) < expect
        and time.time() - quiet_since < idle
        and (first is None or time.time() - first < limit)
    ):
        update = pc.WaitForUpdatesEx(
            version, vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=1)
        )
        if update is None:
            continue
        now = time.time()
        version = update.version
        for fs in update.filterSet or []:
            for obj in fs.objectSet or []:
                for change in obj.changeSet or []:
                    for e in change.val or []:
                        key = int(e.key)
                        if last is not None and key <= last:
                            continue
                        msg = getattr(e, "message", None) or e.fullFormattedMessage or ""
                        if msg.startswith(MARK):
                            seen.setdefault(int(msg[len(MARK) :]), now)
                            quiet_since = now
                            first = first or now
        keys = [int(e.key) for fs in update.filterSet or [] for obj in fs.objectSet or []
                for change in obj.changeSet or [] for e in change.val or []]  # fmt: skip
        if keys:
            last = max([*keys, last or 0])


# ------------------------------------------------------------------- the vebus side


def _readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return dict(json.loads(e.read() or b"{}"))
    except (OSError, ValueError):
        return {}


def _vc_state(port: int, name: str) -> dict[str, Any]:
    return dict((_readyz(port).get("vcenters") or {}).get(name) or {})


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


async def _stored_times(
    nc: Client, subject: str, copies: dict[int, int] | None = None
) -> dict[int, float]:
    """n -> the time VEBUS_EVENTS stored the event (its publish ack); `copies` counts the
    messages of each n (1 each: no duplicate)."""
    js = nc.jetstream()
    out: dict[int, float] = {}
    seq = 1
    while True:
        try:
            raw = await js.get_msg(EVENTS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        seq = int(raw.seq or 0) + 1
        data = json.loads(raw.data or b"{}")
        msg = str(data.get("Message") or data.get("FullFormattedMessage") or "")
        if msg.startswith(MARK) and raw.time is not None:
            out.setdefault(int(msg[len(MARK) :]), raw.time.timestamp())
            if copies is not None:
                copies[int(msg[len(MARK) :])] = copies.get(int(msg[len(MARK) :]), 0) + 1


def _rates(
    posted: dict[int, float], seen: dict[int, float], start: float
) -> dict[str, float | int]:
    lags = [seen[n] - posted[n] for n in seen if n in posted]
    s = summary(lags)
    end = max(seen.values()) if seen else start
    return {
        "seen": len(seen),
        "rate": len(seen) / (end - start) if end > start else 0.0,
        "lag_p50_ms": s["p50"] * 1000,
        "lag_p99_ms": s["p99"] * 1000,
        "lag_max_ms": s["max"] * 1000,
    }


def follow_run(
    work: Path, nats_url: str, binary: Path, page_size: int, events: int, posters: int
) -> dict[str, Any]:
    """One page size, one simulator: a burst followed by the raw reader alone, then a burst
    followed by the collector alone.

    They cannot follow at the same time: vcsim 0.24 keeps one update listener per
    PropertyCollector reference, and every session's collector has the same reference, so
    only the session that called WaitForUpdatesEx("") last gets updates."""
    run = work / f"page{page_size}"
    run.mkdir()
    vcsim, url = start_vcsim(binary, log_path=run / "vcsim.log")
    try:
        out = run / "raw.json"
        reader = subprocess.Popen(
            [sys.executable, "-m", "loadtest.collector", "--raw-reader", url,
             str(page_size), str(events), str(out)],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready"
            raw_posted, raw_start, raw_end = _post_all(url, events, posters)
            try:
                reader.wait(180)
            except subprocess.TimeoutExpired:  # fell too far behind: take what it saw
                reader.terminate()
                reader.wait(60)
        finally:
            if reader.poll() is None:
                reader.kill()
        raw_seen = {int(k): v for k, v in json.loads(out.read_text() or "{}").items()}
        copies: dict[int, int] = {}
        posted, start, end, stored = _collector_phase(
            run, nats_url, url, page_size, events, posters, copies
        )
        return {
            "page_size": page_size,
            "events": events,
            "duplicates": sum(c - 1 for c in copies.values()),
            "missing": events - len(stored),
            "post_rate": events / (end - start),
            "post_rate_raw_phase": events / (raw_end - raw_start),
            "collector": _rates(posted, stored, start),
            "raw": _rates(raw_posted, raw_seen, raw_start),
        }
    finally:
        vcsim.stop()


def _collector_phase(
    run: Path,
    nats_url: str,
    url: str,
    page_size: int,
    events: int,
    posters: int,
    copies: dict[int, int] | None = None,
) -> tuple[dict[int, float], float, float, dict[int, float]]:
    """The collector process follows a burst; (post times, start, end, stored times)."""
    name = f"lt{page_size}"
    config = {
        "nats": {"url": nats_url},
        "vcenters": [
            {"name": name, "url": url, "username": "user", "password": "pass",
             "page_size": page_size, "start": "latest"}
        ],
    }  # fmt: skip
    (run / "vebus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    collector = start_service(
        "collector", run / "vebus.yaml", health_port=port, log_path=run / "collector.log"
    )
    try:
        _wait(lambda: _vc_state(port, name).get("state") == "tailing", 60, "collector tailing")
        posted, start, end = _post_all(url, events, posters)
        with contextlib.suppress(RuntimeError):
            _wait(lambda: int(_vc_state(port, name).get("published", 0)) >= events, 60, "publish")
    finally:
        collector.stop()

    async def stored() -> dict[int, float]:
        nc = await nats.connect(nats_url)
        try:
            return await _stored_times(nc, f"vebus.events.{name}.>", copies)
        finally:
            await nc.close()

    return posted, start, end, asyncio.run(stored())


# --------------------------------------------------------------- the publish path


async def publish_path(nats_url: str, count: int, windows: list[int]) -> list[dict[str, Any]]:
    """The old gather-of-256 path against bounded async publishes, same messages."""
    from vebus_collector.publisher import JetStreamPublisher

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    body = (REPO / "tests" / "data" / "veba" / "veba-VmPoweredOffEvent.json").read_bytes()
    rows: list[dict[str, Any]] = []

    def messages(run: str) -> list[OutgoingMessage]:
        return [
            OutgoingMessage(
                f"lt.pub.{run}",
                body,
                {"Nats-Msg-Id": f"{run}:{i}", "ce-id": str(i), "ce-type": "t", "ce-source": "s"},
            )
            for i in range(count)
        ]

    try:
        await js.add_stream(StreamConfig(name="LT_PUB", subjects=["lt.pub.>"]))
        msgs = messages("gather")
        t0 = time.perf_counter()
        for i in range(0, count, 256):
            await publish_all(js, msgs[i : i + 256])
        old = time.perf_counter() - t0
        rows.append({"path": "gather, batches of 256 (before)", "msgs_per_s": count / old,
                     "ratio": 1.0})  # fmt: skip
        for window in windows:
            msgs = messages(f"w{window}")
            acked = 0

            def on_ack(_: int) -> None:
                nonlocal acked
                acked += 1

            publisher: JetStreamPublisher[int] = JetStreamPublisher(js, window=window)
            t0 = time.perf_counter()
            await publisher.publish([(m, i) for i, m in enumerate(msgs)], on_ack)
            took = time.perf_counter() - t0
            assert acked == count
            rows.append({"path": f"async, window {window}", "msgs_per_s": count / took,
                         "ratio": old / took})  # fmt: skip
        info = await js.stream_info("LT_PUB")
        assert info.state.messages == count * (1 + len(windows)), "every message stored once"
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream("LT_PUB")
        await nc.close()
    return rows


# -------------------------------------------------------------------- failover


def failover(work: Path, nats_url: str, binary: Path) -> dict[str, float]:
    """SIGKILL the active replica: seconds until the standby is active, and until it has
    published an event posted right after the kill."""
    run = work / "failover"
    run.mkdir()
    vcsim, url = start_vcsim(binary, log_path=run / "vcsim.log")
    config = {
        "nats": {"url": nats_url},
        "vcenters": [{"name": "fo", "url": url, "username": "user", "password": "pass"}],
    }
    (run / "vebus.yaml").write_text(yaml.safe_dump(config))
    procs: list[ManagedProcess] = []
    try:
        ports = []
        for i in range(2):
            ports.append(free_port())
            procs.append(
                start_service(
                    "collector",
                    run / "vebus.yaml",
                    health_port=ports[-1],
                    log_path=run / f"collector{i}.log",
                )
            )
            _wait(lambda p=ports[-1]: _vc_state(p, "fo").get("state") in ("tailing", "standby"),
                  60, "replica up")  # fmt: skip
        active = next(i for i, p in enumerate(ports) if _vc_state(p, "fo").get("role") == "active")
        standby = 1 - active
        base = int(_vc_state(ports[standby], "fo").get("published", 0))
        procs[active].signal(signal.SIGKILL)
        killed = time.monotonic()
        _post_all(url, 1, 1)
        became = _wait(lambda: _vc_state(ports[standby], "fo").get("role") == "active", 30, "x")
        _wait(lambda: int(_vc_state(ports[standby], "fo").get("published", 0)) > base, 30, "y")
        return {"active_after_s": became, "published_after_s": time.monotonic() - killed}
    finally:
        for p in procs:
            p.kill()
        vcsim.stop()


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.collector", description=__doc__)
    p.add_argument("--short", action="store_true", help="a few seconds in all")
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--posters", type=int, default=2, help="threads posting events")
    p.add_argument("--page-sizes", default="20,50,100,200,500")
    p.add_argument("--workdir", help="keep logs and data here (default: a temporary folder)")
    p.add_argument("--raw-reader", nargs=4, metavar=("URL", "PAGE", "EXPECT", "OUT"),
                   help=argparse.SUPPRESS)  # fmt: skip
    a = p.parse_args(argv)
    if a.raw_reader:
        url, page, expect, out = a.raw_reader
        raw_reader(url, int(page), int(expect), Path(out), idle=5.0)
        return 0
    events = 100 if a.short else a.events
    pages = [20] if a.short else [int(x) for x in a.page_sizes.split(",")]
    pub_count = 1000 if a.short else 20000
    windows = [256] if a.short else [32, 256, 1024]

    binary = vcsim_binary(REPO / "build")
    with contextlib.ExitStack() as stack:
        if a.workdir:
            work = Path(a.workdir)
            work.mkdir(parents=True, exist_ok=False)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vebus-lt-")))
        server, nport = start_nats(work / "nats")
        nats_url = f"nats://127.0.0.1:{nport}"
        try:
            publish_rows = asyncio.run(publish_path(nats_url, pub_count, windows))
            runs = [follow_run(work, nats_url, binary, ps, events, a.posters) for ps in pages]
            fo = None if a.short else failover(work, nats_url, binary)
        finally:
            server.kill()

    print_table(f"publish path: {pub_count} events (~1.5 KB) to one stream", publish_rows)
    rows = []
    for r in runs:
        c, raw = r["collector"], r["raw"]
        for who, m, rate in (("collector", c, r["post_rate"]),
                             ("raw pyvmomi", raw, r["post_rate_raw_phase"])):  # fmt: skip
            rows.append({"page": r["page_size"], "reader": who, "posted/s": rate,
                         "seen": f"{m['seen']}/{r['events']}", "rate/s": m["rate"],
                         "lag p50 ms": m["lag_p50_ms"], "lag p99 ms": m["lag_p99_ms"]})  # fmt: skip
    print_table(f"following vcsim: {events} events posted by {a.posters} threads", rows)
    ratios = [
        {
            "page": r["page_size"],
            "rate collector/raw": r["collector"]["rate"] / r["raw"]["rate"]
            if r["raw"]["rate"]
            else float("nan"),
            "p50 lag collector/raw": r["collector"]["lag_p50_ms"] / r["raw"]["lag_p50_ms"]
            if r["raw"]["lag_p50_ms"]
            else float("nan"),
            "p99 lag collector/raw": r["collector"]["lag_p99_ms"] / r["raw"]["lag_p99_ms"]
            if r["raw"]["lag_p99_ms"]
            else float("nan"),
        }
        for r in runs
    ]
    print_table("ratios (same run, same simulator)", ratios)
    if fo is not None:
        print_table("failover (SIGKILL of the active replica, lease TTL 5 s)", [fo])
    path = write_results(
        "collector-short" if a.short else "collector",
        {"publish_path": publish_rows, "follow": runs, "ratios": ratios, "failover": fo,
         "cpus": os.cpu_count()},
    )  # fmt: skip
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
