"""`vebus status`: the bus on one screen: NATS, streams, consumer backlogs, every replica.

What it shows is collected by `vebus.bus.status.collect_status` (shared with the
console's status page): replicas through NATS micro-service discovery, two samples
`--interval` apart for the recent rates, and JetStream's stream sizes, consumer backlogs
and dead letters per route.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from vebus.bus.status import collect_status, discover
from vebus.cli._common import config_option, connect, load_or_default, nats_url_option, run_async

__all__ = ["collect_status", "discover", "status"]


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
