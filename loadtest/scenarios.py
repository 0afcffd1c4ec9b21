"""The runner's scenarios: latency, throughput, scale-out, backlog, routes, burst, functions
(loadtest/functions.py).

Each is `async def <name>(workdir, short) -> dict` returning its results: `rows` (the table
printed), `chart` (series for the PNG), `goal` (what the issue asks, met or not, the
figure) and `settings` (the JetStream storage and sync settings the run used). Baselines are
measured in the same run, next to what they are compared with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loadtest import dispatcher as dbench
from loadtest import filter as fbench
from loadtest import rawpipe, wqconsumers
from loadtest.collector import _connect, _vc_state, follow_run
from loadtest.functions import functions
from loadtest.pipeline import Bench, ms, rate_of, routes_yaml, vm_hwm_mb
from vebus.local.embedded import start_vcsim, vcsim_binary
from vebus.runtime import eventloop

REPO = Path(__file__).resolve().parents[1]
#: events queued in the backlog scenario (the runner's --backlog changes the full one)
BACKLOG = {"short": 5000, "full": 1_000_000}

__all__ = ["SCENARIOS"]


def _goal(text: str, met: bool, figure: str) -> dict[str, Any]:
    return {"goal": text, "met": met, "figure": figure}


# ------------------------------------------------------------------------------ 1 latency


def post_steady(url: str, rate: float, count: int) -> dict[int, float]:
    """Post `count` GeneralUserEvents to vcsim at `rate` per second from two threads, each
    post at its due time (a late post does not shift the ones after it); n -> post time."""
    from pyVmomi import vim

    threads = 2
    sessions = [_connect(url) for _ in range(threads)]
    t0 = time.perf_counter() + 0.2
    posted: dict[int, float] = {}

    def worker(t: int) -> None:
        em = sessions[t].content.eventManager
        for n in range(t, count, threads):
            wait = t0 + n / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            posted[n] = time.time()
            em.PostEvent(
                vim.event.GeneralUserEvent(
                    message=f"lt-{n}",
                    createdTime=dt.datetime.now(dt.UTC),
                    key=0,
                    chainId=0,
                    userName="",
                )
            )

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return posted


def raw_reader_lag(url: str, rate: float, count: int, workdir: Path) -> dict[str, float]:
    """The baseline of the collector hop: the plainest pyvmomi reader (WaitForUpdatesEx on
    latestPage, loadtest/collector.py) following the same steady posts; ms from the post
    to the reader seeing the event. Run before the collector starts: vcsim sends property
    updates to one session only."""
    out = workdir / f"raw-{rate}.json"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtest.collector",
            "--raw-reader",
            url,
            "100",
            str(count),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        posted = post_steady(url, rate, count)
        reader.wait(60)
    finally:
        if reader.poll() is None:
            reader.kill()
    seen = {int(k): v for k, v in json.loads(out.read_text() or "{}").items()}
    return {"n": len(seen), **ms([seen[n] - posted[n] for n in seen if n in posted])}


async def latency(workdir: Path, short: bool) -> dict[str, Any]:
    """vcsim -> collector -> filter -> dispatcher -> sink at steady rates; latency from
    vCenter's createdTime to the sink, and per hop from the times a core NATS subscriber in
    this process sees each event on vebus.events.> (stored by the collector) and on
    vebus.routes.> (stored by the filter)."""
    seconds = 2 if short else 30
    binary = vcsim_binary(REPO / "build")
    vcsim, vc_url = start_vcsim(binary, log_path=workdir / "vcsim.log")
    rows, chart, runs = [], {}, []
    try:
        async with Bench(workdir / "pipe") as b:
            b.write_config(
                f"nats: {{url: '{b.nats_url}'}}\n"
                f"vcenters:\n  - {{name: vc01, url: '{vc_url}', username: user, password: pass,"
                f" start: latest}}\n"
                f"routes:\n  - name: all\n    sink: {{kind: webhook, url: '{b.sink.url}'}}\n"
            )
            await b.ensure_streams()
            await b.start("dispatcher")
            await b.start("filter")
            raw = {}
            for rate in (20, 100):
                raw[rate] = await asyncio.to_thread(
                    raw_reader_lag, vc_url, rate, rate * min(seconds, 10), workdir
                )
            port = await _start_collector(b)
            assert b.nc is not None
            seen: dict[str, dict[str, float]] = {"events": {}, "routes": {}}

            def recorder(hop: str) -> Any:
                async def cb(msg: Any) -> None:
                    seen[hop].setdefault((msg.headers or {}).get("ce-id", ""), time.time())

                return cb

            await b.nc.subscribe("vebus.events.>", cb=recorder("events"))
            await b.nc.subscribe("vebus.routes.>", cb=recorder("routes"))
            # warm-up: connections, the first page
            await asyncio.to_thread(post_steady, vc_url, 10, 5)
            await b.wait_sink(5, 60, "warm-up")
            for rate in (20, 100):
                before = int((await asyncio.to_thread(b.sink.stats))["count"])
                count = rate * seconds
                # where the CPU goes on the vCenter side: the simulator, and the collector
                # decoding vcsim's updates (each carries the whole latestPage)
                cpu0 = {
                    "collector": b.cpu("collector"),
                    "vcsim": dbench.cpu_seconds(vcsim.pid),
                }
                t0 = time.monotonic()
                await asyncio.to_thread(post_steady, vc_url, rate, count)
                await b.wait_sink(before + count, 60 + seconds, f"latency at {rate}/s")
                wall = time.monotonic() - t0
                cpu_share = {
                    "collector": (b.cpu("collector") - cpu0["collector"]) / wall,
                    "vcsim": (dbench.cpu_seconds(vcsim.pid) - cpu0["vcsim"]) / wall,
                }
                await asyncio.sleep(0.2)
                samples = await asyncio.to_thread(b.sink.samples, before)
                e2e = []
                hops: dict[str, list[float]] = {
                    "collector": [], "filter": [], "dispatcher": [], "filter + dispatcher": []
                }  # fmt: skip
                for ce_id, ce_time, at in samples:
                    created = fbench._stamp(ce_time)
                    e2e.append(at - created)
                    t_ev, t_rt = seen["events"].get(ce_id), seen["routes"].get(ce_id)
                    if t_ev is not None and t_rt is not None:
                        hops["collector"].append(t_ev - created)
                        hops["filter"].append(t_rt - t_ev)
                        hops["dispatcher"].append(at - t_rt)
                        hops["filter + dispatcher"].append(at - t_ev)
                run = {
                    "rate": rate,
                    "events": len(samples),
                    "e2e_ms": ms(e2e),
                    "hops_ms": {h: ms(v) for h, v in hops.items()},
                    # CPU seconds per wall second (1.0 = one core busy) while posting
                    "cpu_cores": cpu_share,
                }
                runs.append(run)
                rows.append({"rate/s": rate, "hop": "end to end", "n": len(e2e), **run["e2e_ms"]})
                for h, v in run["hops_ms"].items():
                    rows.append({"rate/s": rate, "hop": h, "n": len(hops[h]), **v})
                # the same run's baseline for the collector hop (post time, not createdTime)
                run["raw_pyvmomi_reader_ms"] = raw[rate]
                rows.append({"rate/s": rate, "hop": "baseline: raw pyvmomi reader", **raw[rate]})
                chart[f"{rate}/s"] = run["e2e_ms"]
            state = _vc_state(port, "vc01")
            settings = await b.settings()
    finally:
        vcsim.stop()
    at100 = runs[-1]["e2e_ms"]
    own = runs[-1]["hops_ms"]["filter + dispatcher"]
    return {
        "runs": runs,
        "rows": rows,
        "collector_state": state,
        "chart": {
            "series": {f"{p}": {r: v[p] for r, v in chart.items()} for p in ("p50", "p95", "p99")},
            "ylabel": "ms from createdTime to the sink",
        },
        "goal": _goal(
            "vebus's own hops (filter + dispatcher) p99 <= 20 ms at 100 events/s",
            own["p99"] <= 20,
            f"filter + dispatcher p50 {own['p50']:.1f} ms, p99 {own['p99']:.1f} ms; end to "
            f"end (vcsim's 250 ms ticker included) p50 {at100['p50']:.0f} ms, p99 "
            f"{at100['p99']:.0f} ms",
        ),
        "settings": settings,
    }


async def _start_collector(b: Bench) -> int:
    """Start the collector and wait until it tails vc01; its health port."""
    proc = await b.start("collector")
    port = int(proc.args[proc.args.index("--health-port") + 1])
    deadline = time.monotonic() + 60
    while _vc_state(port, "vc01").get("state") != "tailing":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the collector is not tailing vc01:\n{proc.output()[-3000:]}")
        await asyncio.sleep(0.1)
    return port


# ------------------------------------------------------------------------------ 2 throughput


async def _pipeline_run(
    workdir: Path, count: int, routes: int, *, paced_s: float = 0.0, hang: bool = False
) -> dict[str, Any]:
    """A backlog of `count` events in VEBUS_EVENTS through the filter and one dispatcher to
    a sink that answers at once: events/s at the sink, CPU per event of each service; with
    `paced_s`, then e2e latency of events injected at half that rate for that long. With
    `hang`, route r0's sink never answers (each attempt times out): the rate is that of
    the other routes' events."""
    async with Bench(workdir) as b:
        hung = dbench.Sink(workdir, 3600.0) if hang else None
        try:
            urls = {0: hung.url} if hung is not None else None
            b.write_config(routes_yaml(b.nats_url, b.sink.url, routes, urls=urls))
            await b.ensure_streams()
            t_start = time.perf_counter()
            await b.start("dispatcher", timeout=max(120.0, routes / 20))
            dispatcher_start = time.perf_counter() - t_start
            await b.inject(0, count, routes)
            cpu0 = {n: 0.0 for n in ("filter", "dispatcher")}
            await b.start("filter", timeout=max(120.0, routes / 20))
            cpu0 = {n: b.cpu(n) for n in cpu0}
            nats0 = dbench.cpu_seconds(b.nats_proc.pid)
            expect = count - (len(range(0, count, routes)) if hang else 0)
            await b.wait_sink(expect, max(120.0, count / 100), "pipeline")
            _, recv = b.latencies()
            out: dict[str, Any] = {
                "routes": routes,
                "events": expect,
                "hung_route": hang,
                "events_per_s": rate_of(recv),
                "cpu_us_per_event": {n: (b.cpu(n) - c) / expect * 1e6 for n, c in cpu0.items()},
                "nats_cpu_us_per_event": (dbench.cpu_seconds(b.nats_proc.pid) - nats0)
                / expect
                * 1e6,
                "dispatcher_start_s": dispatcher_start,
                "dispatcher_rss_mb": vm_hwm_mb(b.services["dispatcher"].pid),
            }
            if hung is not None:
                out["hung_sink_requests"] = (await asyncio.to_thread(hung.stats))["count"]
            if paced_s:
                rate = out["events_per_s"] / 2
                n = int(rate * paced_s)
                await b.inject_paced(count, n, rate, routes)
                await b.wait_sink(count + n, 60, "paced")
                lat, _ = b.latencies(count)
                out["paced"] = {"rate": rate, "events": n, "e2e_ms": ms(lat)}
            out["settings"] = await b.settings()
            return out
        finally:
            if hung is not None:
                hung.stop()


async def throughput(workdir: Path, short: bool) -> dict[str, Any]:
    """The pipeline (filter + dispatcher) against the raw two-stage pipeline
    (loadtest/rawpipe.py: the same work as bare nats-py loops, same in-flight bounds), a
    raw nats-py consume -> republish -> ack loop alone and a raw aiohttp POST loop alone,
    alternated (the machine's load drifts)."""
    n = 1500 if short else 20000
    rounds = 1 if short else 3
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for i in range(rounds):
        hop, hop_cpu = await fbench.one_run(workdir, "raw", n, None)
        async with Bench(workdir / f"post{i}") as b:
            post = await dbench.raw_post_loop(b.sink.url, n)
        raw2 = await rawpipe.raw_pipeline_run(workdir / f"raw2-{i}", n)
        pipe = await _pipeline_run(workdir / f"pipe{i}", n, 1, paced_s=2 if short else 10)
        settings = pipe.pop("settings")
        runs.append({"raw_hop": hop, "raw_hop_per_cpu_s": hop_cpu, "raw_post": post,
                     "raw_pipeline": raw2, **pipe})  # fmt: skip
        dash = {"p50_ms": "-", "p99_ms": "-"}
        rows += [
            {"round": i + 1, "what": "raw nats-py consume->republish->ack (alone)",
             "events/s": hop, "cpu_us/ev": 1e6 / hop_cpu if hop_cpu else "-", **dash},
            {"round": i + 1, "what": "raw aiohttp POST loop (16 in flight, alone)",
             "events/s": post, "cpu_us/ev": "-", **dash},
            {"round": i + 1, "what": "raw two-stage pipeline: hop + consume->POST",
             "events/s": raw2["events_per_s"],
             "cpu_us/ev": " + ".join(f"{k} {v:.0f}" for k, v in raw2["cpu_us_per_event"].items()),
             **dash},
            {"round": i + 1, "what": "vebus pipeline: filter + dispatcher",
             "events/s": pipe["events_per_s"],
             "cpu_us/ev": " + ".join(f"{k} {v:.0f}" for k, v in pipe["cpu_us_per_event"].items()),
             "p50_ms": pipe["paced"]["e2e_ms"]["p50"], "p99_ms": pipe["paced"]["e2e_ms"]["p99"]},
        ]  # fmt: skip
    med = {
        "raw_hop": statistics.median(r["raw_hop"] for r in runs),
        "raw_post": statistics.median(r["raw_post"] for r in runs),
        "raw_pipeline": statistics.median(r["raw_pipeline"]["events_per_s"] for r in runs),
        "events_per_s": statistics.median(r["events_per_s"] for r in runs),
        "filter_cpu_us": statistics.median(r["cpu_us_per_event"]["filter"] for r in runs),
        "dispatcher_cpu_us": statistics.median(r["cpu_us_per_event"]["dispatcher"] for r in runs),
        "raw_hop_cpu_us": statistics.median(
            r["raw_pipeline"]["cpu_us_per_event"]["hop"] for r in runs
        ),
        "raw_post_cpu_us": statistics.median(
            r["raw_pipeline"]["cpu_us_per_event"]["post"] for r in runs
        ),
    }
    vs_raw2 = med["events_per_s"] / med["raw_pipeline"]
    filter_x = med["filter_cpu_us"] / med["raw_hop_cpu_us"]
    dispatcher_x = med["dispatcher_cpu_us"] / med["raw_post_cpu_us"]
    rows.append({"round": "median", "what": "vebus / raw two-stage", "events/s": vs_raw2,
                 "cpu_us/ev": f"filter {filter_x:.2f}x, dispatcher {dispatcher_x:.2f}x",
                 "p50_ms": "-", "p99_ms": "-"})  # fmt: skip
    return {
        "events": n,
        "event_loop": eventloop.chosen(),
        "runs": runs,
        "rows": rows,
        "medians": med,
        "pipeline_vs_raw_pipeline": vs_raw2,
        "pipeline_vs_raw_hop": med["events_per_s"] / med["raw_hop"],
        "pipeline_vs_raw_post": med["events_per_s"] / med["raw_post"],
        "filter_cpu_vs_raw_hop": filter_x,
        "dispatcher_cpu_vs_raw_post": dispatcher_x,
        "chart": {
            "series": {
                "events/s (median)": {
                    "raw nats hop": med["raw_hop"],
                    "raw POST": med["raw_post"],
                    "raw two-stage": med["raw_pipeline"],
                    "pipeline": med["events_per_s"],
                }
            },
            "ylabel": "events/s",
        },
        "goal": _goal(
            "pipeline >= 0.8 of the raw two-stage pipeline; filter and dispatcher CPU per "
            "event <= 1.2x the raw stage's",
            vs_raw2 >= 0.8 and filter_x <= 1.2 and dispatcher_x <= 1.2,
            f"{med['events_per_s']:,.0f} events/s = {vs_raw2:.2f} of the raw two-stage "
            f"pipeline ({med['raw_pipeline']:,.0f}/s); CPU per event: filter "
            f"{med['filter_cpu_us']:.0f} us = {filter_x:.2f}x the raw hop's "
            f"({med['raw_hop_cpu_us']:.0f}), dispatcher {med['dispatcher_cpu_us']:.0f} us = "
            f"{dispatcher_x:.2f}x the raw consume->POST's ({med['raw_post_cpu_us']:.0f})",
        ),
        "settings": settings,
    }


# ------------------------------------------------------------------------------ 3 scale-out


async def scaleout(workdir: Path, short: bool) -> dict[str, Any]:
    """1, 2, 4 dispatcher replicas against a sink answering after 20 ms (16 in flight each:
    one replica is bounded at 800 events/s)."""
    per: dict[int, dict[str, Any]] = {}
    async with Bench(workdir, sink_delay=0.02) as b:
        for replicas in (1, 2, 4):
            count = (300 if short else 4000) * replicas
            per[replicas] = await dbench.dispatcher_run(
                workdir, b.nats_url, b.sink, replicas, count, (b.nats_proc.pid, b.sink.proc.pid)
            )
        settings = await b.settings()
    ratio = per[4]["events_per_s"] / per[1]["events_per_s"]
    rows = [{**r, "x_one": r["events_per_s"] / per[1]["events_per_s"]} for r in per.values()]
    return {
        "runs": list(per.values()),
        "rows": rows,
        "ratio_4_1": ratio,
        "chart": {
            "series": {"events/s": {f"{k} replica(s)": v["events_per_s"] for k, v in per.items()}},
            "ylabel": "events/s (sink answers after 20 ms)",
        },
        "goal": _goal("4 replicas >= 3.2x one", ratio >= 3.2, f"{ratio:.2f}x"),
        "settings": settings,
    }


# ------------------------------------------------------------------------------ 4 backlog


async def backlog(workdir: Path, short: bool) -> dict[str, Any]:
    """A steady drain of a small backlog, then `big` events queued (routed by the filter)
    while the dispatcher is stopped, then drained; drain rate against the steady one, and
    the peak RSS of each process."""
    big = BACKLOG["short" if short else "full"]
    steady = 1000 if short else 20_000
    async with Bench(workdir) as b:
        b.write_config(routes_yaml(b.nats_url, b.sink.url, 1))
        await b.ensure_streams()
        await b.start("filter")
        # steady: the dispatcher runs while a small backlog arrives at once
        await b.start("dispatcher")
        await b.inject(0, steady, 1)
        await b.wait_sink(steady, 120, "steady")
        _, recv = b.latencies()
        steady_rate = rate_of(recv)
        b.stop("dispatcher")
        # the backlog: queued while no dispatcher runs
        t0 = time.perf_counter()
        await b.inject(steady, big, 1)
        inject_s = time.perf_counter() - t0
        deadline = time.monotonic() + max(120.0, big / 200)
        while (await b.js.stream_info("VEBUS_ROUTES")).state.messages < big:
            if time.monotonic() > deadline:
                raise RuntimeError("the filter did not route the backlog in time")
            await asyncio.sleep(0.5)
        routed_s = time.perf_counter() - t0
        filter_rss = vm_hwm_mb(b.services["filter"].pid)
        nats_rss_queued = vm_hwm_mb(b.nats_proc.pid)
        stored = (await b.js.stream_info("VEBUS_ROUTES")).state.bytes
        await b.start("dispatcher")
        before = steady
        cpu0 = b.cpu("dispatcher")
        await b.wait_sink(steady + big, max(300.0, big / 100), "drain")
        stats = await asyncio.to_thread(b.sink.stats)
        dispatcher_cpu = (b.cpu("dispatcher") - cpu0) / big * 1e6
        # receipt times of the drain (the sink keeps samples of the first 400k)
        _, recv = b.latencies(before)
        drain_rate = rate_of(recv) if len(recv) == big else (big / (stats["last"] - min(recv)))
        rss = {
            "filter": filter_rss,
            "dispatcher": vm_hwm_mb(b.services["dispatcher"].pid),
            "nats-server (queued)": nats_rss_queued,
            "nats-server (end)": vm_hwm_mb(b.nats_proc.pid),
        }
        settings = await b.settings()
    ratio = drain_rate / steady_rate
    services_max = max(rss["filter"], rss["dispatcher"])
    rows = [
        {"what": f"steady: {steady:,} events, dispatcher running", "events/s": steady_rate},
        {"what": f"backlog: {big:,} injected (filter routing)", "events/s": big / routed_s},
        {"what": f"drain: {big:,} queued, dispatcher started", "events/s": drain_rate},
    ] + [{"what": f"peak RSS MB: {k}", "events/s": v} for k, v in rss.items()]
    return {
        "backlog": big,
        "steady_events": steady,
        "steady_per_s": steady_rate,
        "inject_s": inject_s,
        "routed_s": routed_s,
        "routes_stream_bytes": stored,
        "drain_per_s": drain_rate,
        "drain_dispatcher_cpu_us": dispatcher_cpu,
        "drain_vs_steady": ratio,
        "peak_rss_mb": rss,
        "rows": rows,
        "chart": {"series": {"peak RSS MB": rss}, "ylabel": "MB (VmHWM)"},
        "goal": _goal(
            "peak RSS per service < 150 MB with the backlog queued; drain >= 0.8 of steady",
            services_max < 150 and ratio >= 0.8,
            f"filter {rss['filter']:.0f} MB, dispatcher {rss['dispatcher']:.0f} MB; "
            f"drain {drain_rate:,.0f}/s = {ratio:.2f} of steady {steady_rate:,.0f}/s "
            f"({big:,} events)",
        ),
        "settings": settings,
    }


# ------------------------------------------------------------------------------ 5 routes


async def routes(workdir: Path, short: bool) -> dict[str, Any]:
    """Pipeline throughput with 1, 100 and 1,000 routes (short: 1, 10, 100), each event
    matching one; at the most routes again with route r0's sink hanging (the rate of the
    others: route isolation); and 10,000 routes (not in the short form; no goal)."""
    n = 1000 if short else 20000
    per: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    counts = (1, 10, 100) if short else (1, 100, 1000)
    most = counts[-1]
    runs: list[tuple[str, int, bool]] = [(str(c), c, False) for c in counts]
    runs.append((f"{most} hang", most, True))
    if not short:
        runs.append(("10000", 10000, False))
    failed: dict[str, str] = {}
    for label, count, hang in runs:
        try:
            per[label] = await _pipeline_run(workdir / f"routes-{label}", n, count, hang=hang)
        except Exception as e:  # the 10,000-route run has no goal: report it, keep the rest
            if label != "10000":
                raise
            failed[label] = f"{type(e).__name__}: {str(e)[-2000:]}"
            print(f"!! routes {label} failed: {failed[label]}", flush=True)
            continue
        settings = per[label].pop("settings")
    # the limit without vebus: nats-server's own cost per message on a work-queue stream
    # with as many consumers (loadtest/wqconsumers.py)
    server = [await wqconsumers.server_cost(workdir, c, n) for c in (1, most)]
    one = per["1"]
    ratio = per[str(most)]["events_per_s"] / one["events_per_s"]
    cpu_x = per[str(most)]["cpu_us_per_event"]["dispatcher"] / one["cpu_us_per_event"]["dispatcher"]
    start_x = per[str(most)]["dispatcher_start_s"] / one["dispatcher_start_s"]
    hang_x = per[f"{most} hang"]["events_per_s"] / per[str(most)]["events_per_s"]
    rows = [
        {
            "routes": k if not v["hung_route"] else f"{v['routes']}, r0's sink hangs",
            "events/s": v["events_per_s"],
            "x_one": v["events_per_s"] / one["events_per_s"],
            **{f"{s}_cpu_us/ev": c for s, c in v["cpu_us_per_event"].items()},
            "x_one_cpu": v["cpu_us_per_event"]["dispatcher"]
            / one["cpu_us_per_event"]["dispatcher"],
            "dispatcher_start_s": v["dispatcher_start_s"],
            "dispatcher_rss_mb": v["dispatcher_rss_mb"],
        }
        for k, v in per.items()
    ]
    rows += [
        {
            "routes": f"raw nats: {w['consumers']} consumer(s)",
            "events/s": w["events_per_s"],
            "x_one": w["events_per_s"] / server[0]["events_per_s"],
            "filter_cpu_us/ev": "-",
            "dispatcher_cpu_us/ev": "-",
            "x_one_cpu": w["server_cpu_us_per_event"] / server[0]["server_cpu_us_per_event"],
            "nats_cpu_us/ev": w["server_cpu_us_per_event"],
            "dispatcher_start_s": f"create {w['create_consumers_s']:.2f}",
            "dispatcher_rss_mb": "-",
        }
        for w in server
    ]
    return {
        "events": n,
        "event_loop": eventloop.chosen(),
        "runs": list(per.values()),
        "raw_nats_server": server,
        "rows": rows,
        "ratio_most_1": ratio,
        "dispatcher_cpu_most_vs_1": cpu_x,
        "dispatcher_start_most_vs_1": start_x,
        "hang_vs_no_hang": hang_x,
        "failed_runs": failed,
        "chart": {
            "series": {"events/s": {f"{k} route(s)": v["events_per_s"] for k, v in per.items()}},
            "ylabel": "events/s",
        },
        "goal": _goal(
            "1,000 routes >= 0.7 of one; dispatcher CPU per event <= 1.3x and start <= 2x one "
            "route's",
            ratio >= 0.7 and cpu_x <= 1.3 and start_x <= 2,
            f"{most:,} routes: {ratio:.2f} of one, dispatcher CPU {cpu_x:.2f}x, start "
            f"{start_x:.2f}x; with r0's sink hanging the other routes ran at {hang_x:.2f} of "
            f"the rate without",
        ),
        "settings": settings,
    }


# ------------------------------------------------------------------------------ 6 burst


async def burst(workdir: Path, short: bool) -> dict[str, Any]:
    """A burst of 10,000 events (short: 300) posted to vcsim by 4 threads as fast as it
    takes them, followed by the raw pyvmomi reader (WaitForUpdatesEx on `latestPage` of
    the page size, new keys only), then by the collector with that `page_size`, one
    simulator per page size (loadtest/collector.py). vcsim keeps 1,000 events: a key
    must be read before the ring passes it. Lag: from PostEvent's return to the reader
    seeing the event, or to the stream storing it (the publish ack); rate: events over the
    time from the first post to the last seen, against the posting rate of that phase."""
    events = 300 if short else 10_000
    pages = (10,) if short else (1, 10, 100, 1000)
    binary = vcsim_binary(REPO / "build")
    per: list[dict[str, Any]] = []
    async with Bench(workdir / "nats") as b:
        for page in pages:
            per.append(
                await asyncio.to_thread(follow_run, workdir, b.nats_url, binary, page, events, 4)
            )
        settings = await b.settings()
    rows = []
    for r in per:
        c, raw = r["collector"], r["raw"]
        rows.append({"page": r["page_size"], "reader": "collector", "seen": c["seen"],
                     "dup": r["duplicates"], "post/s": r["post_rate"], "read/s": c["rate"],
                     "x_post": c["rate"] / r["post_rate"], "lag_p50_ms": c["lag_p50_ms"],
                     "lag_p99_ms": c["lag_p99_ms"]})  # fmt: skip
        rows.append({"page": r["page_size"], "reader": "raw pyvmomi", "seen": raw["seen"],
                     "dup": "-", "post/s": r["post_rate_raw_phase"], "read/s": raw["rate"],
                     "x_post": raw["rate"] / r["post_rate_raw_phase"],
                     "lag_p50_ms": raw["lag_p50_ms"], "lag_p99_ms": raw["lag_p99_ms"]})  # fmt: skip
    met = all(
        r["collector"]["seen"] == events
        and r["duplicates"] == 0
        and r["collector"]["lag_p99_ms"] <= 2000
        and r["collector"]["rate"] >= 0.8 * r["post_rate"]
        for r in per
    )
    worst = max(per, key=lambda r: r["collector"]["lag_p99_ms"])
    return {
        "events": events,
        "posters": 4,
        "runs": per,
        "rows": rows,
        "chart": {
            "series": {
                f"{who} lag p99": {f"page {r['page_size']}": r[key]["lag_p99_ms"] for r in per}
                for who, key in (("collector", "collector"), ("raw pyvmomi", "raw"))
            },
            "ylabel": "ms from PostEvent to stored / seen",
        },
        "goal": _goal(
            f"{events:,}-event burst: every key once, lag p99 <= 2 s at any page size, rate "
            ">= 0.8 of the posting rate",
            met,
            "; ".join(
                f"page {r['page_size']}: {r['collector']['seen']:,} seen, {r['duplicates']} dup, "
                f"p99 {r['collector']['lag_p99_ms'] / 1000:.2f} s, "
                f"{r['collector']['rate'] / r['post_rate']:.2f} of the posting rate"
                for r in per
            )
            + f" (worst p99 at page {worst['page_size']})",
        ),
        "settings": settings,
    }


# ------------------------------------------------------------------------------ 6 sync


async def _sync_run(
    workdir: Path, sync: str, n: int, rate: float, paced_s: float
) -> dict[str, Any]:
    """One arm: JetStream with `sync_interval` `sync` (or nats-server's default): `n`
    events published (500 acks awaited at a time) into VEBUS_EVENTS, that backlog through
    the filter and a dispatcher, then `rate` events/s for `paced_s` seconds end to end."""
    conf = f'jetstream {{\n  sync_interval: "{sync}"\n}}\n' if sync != "default" else ""
    async with Bench(workdir, nats_conf=conf) as b:
        b.write_config(routes_yaml(b.nats_url, b.sink.url, 1))
        await b.ensure_streams()
        await b.start("dispatcher")
        t0 = time.perf_counter()
        await b.inject(0, n, 1)
        publish_rate = n / (time.perf_counter() - t0)
        await b.start("filter")
        await b.wait_sink(n, max(120.0, n / 50), f"sync {sync} backlog")
        _, recv = b.latencies()
        drain = rate_of(recv)
        m = int(rate * paced_s)
        await b.inject_paced(n, m, rate, 1)
        await b.wait_sink(n + m, 120, f"sync {sync} paced")
        lat, _ = b.latencies(n)
        return {
            "sync": sync,
            "publish_per_s": publish_rate,
            "pipeline_per_s": drain,
            "paced": {"rate": rate, "events": m, "e2e_ms": ms(lat)},
            "settings": await b.settings(),
        }


async def sync(workdir: Path, short: bool) -> dict[str, Any]:
    """What `sync_interval: always` (an fsync before every acknowledgement) costs against
    nats-server's default (fsync every 2 minutes), on the same disk in the same run, the
    arms alternated (the machine's load drifts): publish acks/s into VEBUS_EVENTS, the
    pipeline's events/s draining that backlog, and end-to-end latency at a steady rate."""
    n = 600 if short else 20000
    rounds = 1 if short else 3
    rate, paced_s = (100.0, 1.0) if short else (200.0, 15.0)
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i in range(rounds):
        for arm in ("default", "always"):
            r = await _sync_run(workdir / f"{arm}{i}", arm, n, rate, paced_s)
            runs.append(r)
            rows.append(
                {
                    "round": i + 1,
                    "sync_interval": arm,
                    "publish acks/s": r["publish_per_s"],
                    "pipeline events/s": r["pipeline_per_s"],
                    f"p50_ms @{rate:.0f}/s": r["paced"]["e2e_ms"]["p50"],
                    f"p99_ms @{rate:.0f}/s": r["paced"]["e2e_ms"]["p99"],
                }
            )

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["sync"] == arm)

    def med_lat(arm: str, p: str) -> float:
        return statistics.median(r["paced"]["e2e_ms"][p] for r in runs if r["sync"] == arm)

    pub = {a: med(a, "publish_per_s") for a in ("default", "always")}
    pipe = {a: med(a, "pipeline_per_s") for a in ("default", "always")}
    p50 = {a: med_lat(a, "p50") for a in ("default", "always")}
    settings = {r["sync"]: r.pop("settings") for r in runs}
    return {
        "events": n,
        "runs": runs,
        "rows": rows,
        "medians": {"publish_per_s": pub, "pipeline_per_s": pipe, "p50_ms": p50},
        "always_vs_default": {
            "publish": pub["always"] / pub["default"],
            "pipeline": pipe["always"] / pipe["default"],
        },
        "chart": {
            "series": {
                "default (2m)": {
                    "publish acks/s": pub["default"],
                    "pipeline events/s": pipe["default"],
                },
                "always": {"publish acks/s": pub["always"], "pipeline events/s": pipe["always"]},
            },
            "ylabel": "events/s (median)",
        },
        "goal": _goal(
            "measure: sync_interval always against the default, same disk, same run",
            True,
            f"always: publish {pub['always']:,.0f}/s ({pub['always'] / pub['default']:.2f} of "
            f"the default's {pub['default']:,.0f}/s), pipeline {pipe['always']:,.0f}/s "
            f"({pipe['always'] / pipe['default']:.2f} of {pipe['default']:,.0f}/s), p50 "
            f"{p50['always']:.0f} ms against {p50['default']:.0f} ms",
        ),
        # the streams are the same in both arms; each arm's JetStream config is under by_arm
        "settings": {**settings["always"], "by_arm": settings},
    }


SCENARIOS = {
    "latency": latency,
    "throughput": throughput,
    "scaleout": scaleout,
    "backlog": backlog,
    "routes": routes,
    "burst": burst,
    "sync": sync,
    "functions": functions,
}
