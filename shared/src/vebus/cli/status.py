"""`vebus status`: the bus on one screen: NATS, streams, consumer backlogs, every replica.

Replicas are found the way DESIGN.md says, through NATS micro-service discovery, so it
works the same on one host, under compose and in Kubernetes: one `$SRV.STATS` request is
answered by every vebus process, each with its status as the data of its `status`
endpoint (see `vebus.runtime.service`). Two such samples `--interval` apart give the recent rates
(events received, published, delivered per second). The rest comes from JetStream: stream
sizes, each consumer's backlog (num_pending, ack_pending), dead letters per route.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click
import nats.errors
from nats.aio.client import Client

from vebus import names
from vebus.cli._common import config_option, connect, load_or_default, nats_url_option, run_async

__all__ = ["collect_status", "discover", "status"]

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


def _replica(reply: dict[str, Any]) -> dict[str, Any]:
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
    first = {r["id"]: _replica(r) for r in await discover(nc)}
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
    second = {r["id"]: _replica(r) for r in await discover(nc)}
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
    out["collectors"] = _leases(replicas)
    return out


def _leases(replicas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
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


def _role(rep: dict[str, Any]) -> str:
    if rep["service"] != "collector":
        return ""
    vcs = (rep.get("details") or {}).get("vcenters") or {}
    active = [vc for vc, st in vcs.items() if st.get("role") == "active"]
    return ("active: " + ",".join(active)) if active else ("standby" if vcs else "")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _tables(s: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    streams = [
        [x["name"], "missing" if x.get("missing") else f"{x['messages']:,}",
         "" if x.get("missing") else _human(x["bytes"]), str(x.get("consumers", "")),
         str(x.get("replicas", ""))]
        for x in s["streams"]
    ]  # fmt: skip
    consumers = [
        [c["stream"], c["name"], f"{c['num_pending']:,}", f"{c['ack_pending']:,}",
         f"{c['redelivered']:,}"]
        for c in s["consumers"]
    ]  # fmt: skip
    services = []
    for r in s["services"]:
        rates = r.get("rates") or {}
        counters = r.get("counters") or {}
        services.append(
            [
                r["service"],
                str(r["instance"]),
                f"{r.get('host', '')}:{r.get('health_port', '')}",
                "gone" if r.get("gone") else ("yes" if r.get("ready") else "NO"),
                _role(r),
                f"{counters.get('received', 0):,.0f}",
                f"{counters.get('delivered', 0):,.0f}",
                f"{counters.get('failed', 0):,.0f}",
                " ".join(f"{k} {v:g}/s" for k, v in rates.items() if v) or "-",
            ]
        )
    dead = [[route, f"{n:,}"] for route, n in s["dead_letters"]["by_route"].items()]
    return [
        ("Streams", ["stream", "messages", "bytes", "consumers", "replicas"], streams),
        ("Consumers", ["stream", "consumer", "pending", "ack pending", "redelivered"], consumers),
        ("Replicas",
         ["service", "instance", "host:health", "ready", "lease", "received", "delivered",
          "failed", "recent rate"], services),
        (f"Dead letters: {s['dead_letters']['total']:,}", ["route", "dead letters"], dead),
    ]  # fmt: skip


def _headline(s: dict[str, Any]) -> str:
    n = s["nats"]
    r = s["rates"]
    return (
        f"NATS {n.get('url')} (server {n.get('server') or '?'}, {n.get('version') or '?'}"
        f"{', cluster ' + n['cluster'] if n.get('cluster') else ''}) - "
        f"{len(s['services'])} replica(s), delivering {r['delivered_per_s']:g}/s "
        f"(sampled over {r['sampled_seconds']:g}s)"
    )


def _problems(s: dict[str, Any]) -> list[str]:
    """What the status shows is missing, each with what to do (printed to stderr)."""
    if not s["nats"].get("jetstream"):
        return [
            "this NATS has no JetStream: vebus needs it (nats-server -js; `vebus up` "
            "starts it so), or --nats-url points at another server"
        ]
    out = []
    missing = [x["name"] for x in s["streams"] if x.get("missing")]
    if missing:
        out.append(
            f"no {', '.join(missing)} stream(s): no vebus service has run against this "
            "NATS yet (or --nats-url points at another server)"
        )
    if not s["services"]:
        out.append("no vebus service answered: start them with `vebus up` (or check --nats-url)")
    for r in s["services"]:
        if not r.get("ready") and not r.get("gone") and r.get("reason"):
            out.append(f"{r['service']} {r['instance']} is not ready: {r['reason']}")
    return out


def _print_plain(s: dict[str, Any]) -> None:
    click.echo(_headline(s))
    for title, header, rows in _tables(s):
        click.echo(f"\n{title}")
        if not rows:
            click.echo("  (none)")
            continue
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            click.echo("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _print_rich(s: dict[str, Any]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich comes with the `embedded` extra
        return False
    console = Console()
    console.print(_headline(s), highlight=False)
    for title, header, rows in _tables(s):
        table = Table(title=title, title_justify="left")
        for h in header:
            table.add_column(h)
        for row in rows:
            style = "red" if "NO" in row or "gone" in row else None
            table.add_row(*row, style=style)
        console.print(table)
    return True


@click.command()
@config_option
@nats_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=60.0),
    default=1.0,
    show_default=True,
    help="Seconds between the two samples the rates come from (0.1 to 60).",
)
def status(config_path: str, nats_url: str | None, as_json: bool, interval: float) -> None:
    """Show the bus on one screen: NATS and its streams, each consumer's backlog, every
    replica of every service (found through NATS micro-service discovery, wherever it runs;
    the collector holding each vCenter's lease marked active), dead letters per route and
    the recent delivery rate.

    \b
    Examples:
      vebus status
      vebus status --json | jq '.services[] | select(.service == "dispatcher")'
      vebus status --nats-url nats://nats.vebus.svc:4222
    """
    config = load_or_default(config_path)

    async def run() -> dict[str, Any]:
        nc = await connect(config, nats_url)
        try:
            return await collect_status(nc, interval=interval)
        finally:
            await nc.close()

    result = run_async(run)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    elif not (sys.stdout.isatty() and _print_rich(result)):
        _print_plain(result)
    for line in _problems(result):
        click.echo(f"vebus: {line}", err=True)
