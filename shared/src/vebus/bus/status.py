"""The bus's status as one value: NATS, streams, consumer backlogs, every replica, rates.

Replicas are found the way DESIGN.md says, through NATS micro-service discovery, so it
works the same on one host, under compose and in Kubernetes: one `$SRV.STATS` request is
answered by every vebus process, each with its status as the data of its `status`
endpoint (see `vebus.runtime.service`). Two such samples `interval` apart give the recent
rates (events received, published, delivered per second). The rest comes from JetStream:
stream sizes, each consumer's backlog (num_pending, ack_pending), dead letters per route.
`vebus status` prints it; the console's status page shows it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.errors
from nats.aio.client import Client

from vebus import names

__all__ = [
    "COUNTERS",
    "collect_status",
    "discover",
    "function_summary",
    "leases",
    "merge_quantile",
    "replica_of",
]

#: counters each replica reports, and the rate shown for each
COUNTERS = ("received", "published", "delivered", "failed")


async def discover(nc: Client, timeout: float = 1.0, idle: float = 0.3) -> list[dict[str, Any]]:
    """Every vebus replica's `$SRV.STATS` answer (scatter-gather: replies until `timeout`,
    or until none came for `idle` seconds after the first)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[dict[str, Any]] = []
    try:
        await nc.publish(names.SRV_STATS, b"", reply=inbox)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=min(left, idle) if out else left)
            except (TimeoutError, nats.errors.TimeoutError):
                if out:
                    break
                continue
            try:
                reply = json.loads(msg.data)
            except ValueError:
                continue
            if names.service_of_micro(str(reply.get("name", ""))) is not None:
                out.append(reply)
    finally:
        await sub.unsubscribe()
    return out


def replica_of(reply: dict[str, Any]) -> dict[str, Any]:
    """One replica from its STATS answer: its status endpoint's data, or what STATS says."""
    data: dict[str, Any] = {}
    for ep in reply.get("endpoints") or []:
        if ep.get("name") == "status" and isinstance(ep.get("data"), dict):
            data = ep["data"]
    return {
        "service": data.get("service") or names.service_of_micro(str(reply.get("name", ""))),
        "instance": data.get("instance") or reply.get("id"),
        "id": reply.get("id"),
        "version": reply.get("version"),
        "started": reply.get("started"),
        **{k: v for k, v in data.items() if k not in ("service", "instance", "version")},
    }


async def collect_status(nc: Client, interval: float = 1.0) -> dict[str, Any]:
    """Everything `vebus status` shows, as a dict (what `--json` prints)."""
    js = nc.jetstream()
    first = {r["id"]: replica_of(r) for r in await discover(nc)}
    t0 = time.monotonic()
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    out: dict[str, Any] = {
        "nats": {
            "url": nc.connected_url.geturl() if nc.connected_url else None,
            "server": info.get("server_name"),
            "version": info.get("version"),
            "cluster": info.get("cluster"),
            "jetstream": bool(info.get("jetstream")),
        },
        "streams": [],
        "consumers": [],
        "dead_letters": {"total": 0, "by_route": {}},
    }
    try:
        account = await js.account_info()
        out["nats"]["jetstream_account"] = {
            "memory": account.memory, "storage": account.storage,
            "streams": account.streams, "consumers": account.consumers,
        }  # fmt: skip
    except nats.errors.Error as e:
        out["nats"]["error"] = f"JetStream: {e}"
    for name in (names.EVENTS_STREAM, names.ROUTES_STREAM, names.DLQ_STREAM):
        try:
            si = await js.stream_info(
                name, subjects_filter=names.DLQ_SUBJECTS if name == names.DLQ_STREAM else None
            )
        except nats.errors.Error:
            out["streams"].append({"name": name, "missing": True})
            continue
        state = si.state
        out["streams"].append(
            {
                "name": name,
                "messages": state.messages,
                "bytes": state.bytes,
                "first_seq": state.first_seq,
                "last_seq": state.last_seq,
                "consumers": state.consumer_count,
                "replicas": si.config.num_replicas,
            }
        )
        if name == names.DLQ_STREAM:
            by_route = {
                names.route_of_dlq_subject(subject): count
                for subject, count in sorted((state.subjects or {}).items())
            }
            out["dead_letters"] = {"total": state.messages, "by_route": by_route}
        with_consumers = await js.consumers_info(name) if state.consumer_count else []
        for ci in with_consumers:
            out["consumers"].append(
                {
                    "stream": name,
                    "name": ci.name,
                    "num_pending": ci.num_pending,
                    "ack_pending": ci.num_ack_pending,
                    "redelivered": ci.num_redelivered,
                    "waiting": ci.num_waiting,
                    "delivered_seq": ci.delivered.stream_seq if ci.delivered else None,
                    "ack_floor_seq": ci.ack_floor.stream_seq if ci.ack_floor else None,
                }
            )
    await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    second = {r["id"]: replica_of(r) for r in await discover(nc)}
    elapsed = max(time.monotonic() - t0, 1e-3)
    replicas = []
    for rid, rep in sorted(second.items(), key=lambda kv: (kv[1]["service"], kv[1]["instance"])):
        before = (first.get(rid) or {}).get("counters") or {}
        now = rep.get("counters") or {}
        if before:
            rep["rates"] = {
                k: round(max(0.0, now.get(k, 0) - before.get(k, 0)) / elapsed, 2) for k in COUNTERS
            }
        replicas.append(rep)
    for rid, rep in first.items():  # answered once: stopped, or slow to answer the second
        if rid not in second:
            replicas.append({**rep, "gone": True})
    out["services"] = replicas
    out["rates"] = {
        "delivered_per_s": round(
            sum(r.get("rates", {}).get("delivered", 0.0) for r in replicas), 2
        ),
        "received_by_filter_per_s": round(
            sum(
                r.get("rates", {}).get("received", 0.0)
                for r in replicas
                if r["service"] == "filter"
            ),
            2,
        ),
        "sampled_seconds": round(elapsed, 2),
    }
    out["collectors"] = leases(replicas)
    return out


def leases(replicas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per vCenter: the active collector replica (the lease holder) and the standbys."""
    out: dict[str, dict[str, Any]] = {}
    for rep in replicas:
        if rep["service"] != "collector":
            continue
        for vc, st in ((rep.get("details") or {}).get("vcenters") or {}).items():
            entry = out.setdefault(vc, {"active": None, "standby": [], "state": None})
            if st.get("role") == "active":
                entry["active"] = rep["instance"]
                entry["state"] = st.get("state")
                if (pos := st.get("position")) is not None:
                    entry["last_key"] = pos.get("key")
            else:
                entry["standby"].append(rep["instance"])
    return out


def merge_quantile(buckets: list[int], bounds: list[float], q: float) -> float | None:
    """The `q` quantile of a histogram (counts per bucket, upper `bounds`, one more bucket
    above the last bound), interpolated inside its bucket; None when it is empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = bounds[i - 1] if i > 0 else 0.0
            high = bounds[i] if i < len(bounds) else bounds[-1] * 2
            return low + (high - low) * ((rank - seen) / n)
        seen += n
    return bounds[-1]


def function_summary(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per function, from every functions replica's `$SRV.STATS` answer (`discover`):
    replicas, invocations, errors, outcomes, p50 and p99 duration, problems, last error
    (what `vebus fn list` prints and the console's status page shows)."""
    out: dict[str, dict[str, Any]] = {}
    for reply in replies:
        rep = replica_of(reply)
        if rep.get("service") != "functions":
            continue
        for name, st in ((rep.get("details") or {}).get("functions") or {}).items():
            agg = out.setdefault(name, {
                "function": name, "runtime": st.get("runtime"), "replicas": 0,
                "invocations": 0, "errors": 0, "outcomes": {}, "buckets": None,
                "bounds": st.get("bounds") or [], "problems": [], "last_error": None,
            })  # fmt: skip
            agg["replicas"] += 1
            agg["invocations"] += int(st.get("invocations") or 0)
            agg["errors"] += int(st.get("errors") or 0)
            for k, v in (st.get("outcomes") or {}).items():
                agg["outcomes"][k] = agg["outcomes"].get(k, 0) + int(v)
            b = st.get("buckets") or []
            if agg["buckets"] is None:
                agg["buckets"] = b
            else:
                agg["buckets"] = [x + y for x, y in zip(agg["buckets"], b, strict=False)]
            if st.get("problem"):
                agg["problems"].append(f"{rep.get('instance')}: {st['problem']}")
            agg["last_error"] = st.get("last_error") or agg["last_error"]
    for agg in out.values():
        buckets = agg.pop("buckets") or []
        bounds = agg.pop("bounds")
        agg["p50"] = merge_quantile(buckets, bounds, 0.5) if bounds else None
        agg["p99"] = merge_quantile(buckets, bounds, 0.99) if bounds else None
    return out
