"""`vebus stats`: what happened in a time window of the retained events."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.cli._common import (
    config_option,
    fail,
    load_or_default,
    nats_session,
    nats_url_option,
    run_async,
)
from vebus.errors import InvalidEventError
from vebus.events.stats import Stats

__all__ = ["stats"]


@click.command()
@config_option
@nats_url_option
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Start of the window: an age (1h, 7d) or an RFC 3339 time.",
)
@click.option("--until", "until", default="now", show_default=True, help="End of the window.")
@click.option("--vcenter", help="Only this event source (a vCenter name, webhook, checks).")
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows per table."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw events per type and per hour into this PNG file.",
)
def stats(config_path: str, nats_url: str | None, since: str, until: str, vcenter: str | None,
          top: int, as_json: bool, png: Path | None) -> None:  # fmt: skip
    """Events per type, user, object and hour, top talkers, and the time between paired
    events (VmStartingEvent -> VmPoweredOnEvent, ...) in a window of VEBUS_EVENTS.

    \b
    Examples:
      vebus stats                      # the last 24 hours
      vebus stats --since 1h --json
      vebus stats --since 2026-01-01T00:00:00Z --until 2026-01-02T00:00:00Z --png day.png
    """
    from vebus.bus.window import iter_window

    start, end = _time("--since", since), _time("--until", until)
    if start >= end:
        fail(f"--since {since} is not before --until {until}: the window is empty", 2)
    if png is not None and not png.parent.is_dir():
        fail(f"--png {png}: no folder {png.parent} to write it in", 2)
    config = load_or_default(config_path)
    subject = names.vcenter_subjects(vcenter) if vcenter else names.EVENTS_SUBJECTS

    async def collect() -> Stats:
        agg = Stats(top=top)
        async with nats_session(config, nats_url, stream=names.EVENTS_STREAM) as js:
            async for msg in iter_window(js, start=start, end=end, subject=subject):
                try:
                    ev = from_headers(msg.headers, msg.data)
                    data = ev.json_data()
                except InvalidEventError:
                    continue
                agg.add(ev.attributes(), data)
        return agg

    agg = run_async(collect)
    doc = agg.to_dict()
    doc["window"] = {"since": start.isoformat(), "until": end.isoformat(), "subject": subject}
    if png:
        _chart(doc, png)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    _print(doc)
    if png:
        click.echo(f"chart written to {png}")


def _time(option: str, value: str) -> dt.datetime:
    """`value` as a time, or exit 2 naming `option` and what it expects."""
    from vebus.timespec import parse_time

    try:
        return parse_time(value)
    except ValueError as e:
        fail(f"{option}: {e}", 2)


def _print(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    w = doc["window"]
    console.print(f"[bold]{doc['total']}[/] events on {w['subject']} from {w['since']} to "
                  f"{w['until']}")  # fmt: skip
    for title, key, col in (
        ("Events per type", "by_type", "name"),
        ("Top users", "by_user", "name"),
        ("Top objects", "by_object", "name"),
        ("Per source", "by_source", "name"),
        ("Per hour", "by_hour", "hour"),
    ):
        if not doc[key]:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column(col)
        table.add_column("events", justify="right")
        for row in doc[key]:
            table.add_row(str(row[col]), str(row["events"]))
        console.print(table)
    if doc["durations"]:
        table = Table(title="Paired events", title_justify="left")
        for c in ("pair", "count", "median s", "max s"):
            table.add_column(c, justify="left" if c == "pair" else "right")
        for d in doc["durations"]:
            table.add_row(d["pair"], str(d["count"]), f"{d['median_s']:.3f}", f"{d['max_s']:.3f}")
        console.print(table)


def _chart(doc: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--png needs matplotlib: install vebus with its 'stats' extra", 2)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    types = doc["by_type"][::-1]
    ax1.barh([t["name"] for t in types], [t["events"] for t in types], color="#3b7dd8")
    ax1.set_title("Events per type")
    hours = doc["by_hour"]
    ax2.bar([h["hour"][5:16] for h in hours], [h["events"] for h in hours], color="#d8823b")
    ax2.set_title("Events per hour (UTC)")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        fail(f"--png {path}: cannot write the chart: {e.strerror or e}")
    finally:
        plt.close(fig)
