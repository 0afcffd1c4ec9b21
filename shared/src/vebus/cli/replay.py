"""`vebus replay`: send the events of a time window of VEBUS_EVENTS through the routes again.

The window is the time each event entered VEBUS_EVENTS (its JetStream timestamp), read with
an ephemeral pull consumer that starts at `--from` (DeliverPolicy.BY_START_TIME) and takes
no acks; it stops at the first event at or after `--to`, or at the stream's last event
when the replay started. Each event is matched with the filter's own Router over the
running routes (the stored set, else the config file's: vebus.routing.source), and every
matching route (only `--route` if given) gets a copy on `vebus.routes.<route>`, exactly as
the filter would publish it, with:

- the CloudEvent id unchanged and the `vebusreplay` extension (the time of the replay);
- Nats-Msg-Id `replay:<the filter's Msg-Id for that route>:<run id>`, so the copy is not
  dropped as a duplicate of the original, and running the same replay again with the same
  `--run-id` within the duplicate window stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.bus.dlq import Pacer
from vebus.bus.publish import publish
from vebus.cli._common import (
    check_route_name,
    config_option,
    fail,
    load_or_default,
    nats_session,
    nats_url_option,
    run_async,
    running_routes,
    time_param,
)
from vebus.cli._progress import Progress, progress
from vebus.config import Config
from vebus.errors import InvalidEventError, PublishError, RouteFullError
from vebus.names import MSG_ID
from vebus.routing.router import Router
from vebus.timespec import format_time, utcnow

__all__ = ["replay"]

#: events fetched from VEBUS_EVENTS at once (and copies published at once with no --rate)
BATCH = 128
#: a fetch that brings nothing for this long means the window has no more events
IDLE = 2.0


@dataclass
class RouteCount:
    """What the replay did for one route."""

    matched: int = 0
    published: int = 0
    #: JetStream had the copy already (the same run id, within the duplicate window)
    duplicate: int = 0
    #: the route's queue was full (route_max_msgs)
    refused: int = 0
    failed: int = 0


@dataclass
class Summary:
    """The whole replay, as printed (and as --json)."""

    run_id: str
    start: str
    end: str
    dry_run: bool
    read: int = 0
    invalid: int = 0
    routes: dict[str, RouteCount] = field(default_factory=dict)

    def ok(self) -> bool:
        return all(not (c.refused or c.failed) for c in self.routes.values())


def _headers(msg: Msg, route: str, run_id: str, when: str) -> dict[str, str]:
    original = msg.headers or {}
    base = original.get(MSG_ID) or f"{names.EVENTS_STREAM}:{msg.metadata.sequence.stream}"
    out = {k: v for k, v in original.items() if not k.startswith("Nats-")}
    out[names.CE_PREFIX + names.REPLAY_EXTENSION] = when
    out[MSG_ID] = f"replay:{base}:{names.token(route)}:{run_id}"
    return out


class _Replay:
    """Reads the window, matches, publishes, counts."""

    def __init__(
        self, js: Any, router: Router, only: str | None, summary: Summary, rate: float
    ) -> None:
        self._js = js
        self._router = router
        self._only = only
        self._summary = summary
        self._pacer = Pacer(rate)
        self._rate = rate
        self._when = format_time(utcnow())

    def _copies(self, msg: Msg) -> list[tuple[str, dict[str, str]]]:
        s = self._summary
        s.read += 1
        try:
            doc = from_headers(msg.headers, msg.data).as_match_input()
        except InvalidEventError:
            s.invalid += 1
            return []
        out = []
        for route in self._router.match(doc):
            if self._only is not None and route.name != self._only:
                continue
            s.routes[route.name].matched += 1
            out.append((route.name, _headers(msg, route.name, s.run_id, self._when)))
        return out

    async def _publish(self, route: str, body: bytes, headers: dict[str, str]) -> None:
        count = self._summary.routes[route]
        await self._pacer.wait()
        try:
            ack = await publish(self._js, names.route_subject(route), body, headers)
        except RouteFullError:
            count.refused += 1
        except PublishError:
            count.failed += 1
        else:
            if getattr(ack, "duplicate", False):
                count.duplicate += 1
            else:
                count.published += 1

    async def handle(self, msgs: Sequence[Msg]) -> None:
        jobs = [(r, m.data, h) for m in msgs for r, h in self._copies(m)]
        if self._summary.dry_run or not jobs:
            return
        if self._rate:
            for job in jobs:
                await self._publish(*job)
        else:
            await asyncio.gather(*(self._publish(*job) for job in jobs))


async def _run(
    config: Config,
    nats_url: str | None,
    start: dt.datetime,
    end: dt.datetime,
    only: str | None,
    rate: float,
    summary: Summary,
    bar: Progress,
) -> None:
    async with nats_session(config, nats_url, stream=names.EVENTS_STREAM) as js:
        view = await running_routes(config, js)
        if not view.routes:
            fail("there are no running routes: archive replay sends events through them", 2)
        if only is not None:
            check_route_name(view, "--route", only)
        router = Router(view.routes.values())
        for name in view.routes:
            if only is None or name == only:
                summary.routes[name] = RouteCount()
        info = await js.stream_info(names.EVENTS_STREAM)
        last = int(info.state.last_seq or 0)
        if not info.state.messages:
            return
        psub = await js.pull_subscribe(
            names.EVENTS_SUBJECTS,
            durable=None,
            stream=names.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        work = _Replay(js, router, only, summary, rate)
        try:
            sized = False
            while True:
                try:
                    msgs = await psub.fetch(BATCH, timeout=IDLE)
                except (TimeoutError, nats.errors.TimeoutError):
                    return  # nothing after the last one read
                window = []
                done = False
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream > last or meta.timestamp >= end:
                        done = True
                        break
                    if not sized:
                        bar.total(
                            min(last, meta.sequence.stream + meta.num_pending)
                            - meta.sequence.stream
                            + 1
                        )
                        sized = True
                    window.append(msg)
                await work.handle(window)
                bar.advance(len(window))
                if done or not msgs or msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()


def _print(summary: Summary) -> None:
    what = "would match" if summary.dry_run else "sent"
    click.echo(
        f"replay {summary.run_id}: events that entered {names.EVENTS_STREAM} "
        f"from {summary.start} to {summary.end}"
    )
    click.echo(
        f"read {summary.read} event(s)"
        + (f", {summary.invalid} not valid CloudEvents (skipped)" if summary.invalid else "")
        + f"; {what} per route:"
    )
    header = ["ROUTE", "MATCHED", "PUBLISHED", "DUPLICATE", "REFUSED", "FAILED"]
    rows = [header] + [
        [name, *(str(v) for v in asdict(c).values())] for name, c in summary.routes.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not summary.ok():
        click.echo(
            "some copies were not stored: REFUSED means the route's queue is full "
            "(streams.route_max_msgs); run the same command with --run-id "
            f"{summary.run_id} once it has room",
            err=True,
        )


@click.command(short_help="Send a time window of past events through the routes again.")
@click.option(
    "--from",
    "start",
    required=True,
    callback=time_param,
    metavar="TIME",
    help="Start of the window, inclusive: RFC 3339 (2025-01-02T03:04:05Z) or an age (2h).",
)
@click.option(
    "--to",
    "end",
    callback=time_param,
    metavar="TIME",
    help="End of the window, exclusive (default: now).",
)
@click.option("--route", help="Only this route (default: every route an event matches).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Copies published per second; 0 for no limit.",
)
@click.option(
    "--run-id",
    help="Id of this replay, part of each copy's Msg-Id (default: random). Running again "
    "with the same id within the duplicate window stores nothing twice.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be sent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_option
@nats_url_option
def replay(
    start: dt.datetime,
    end: dt.datetime | None,
    route: str | None,
    rate: float,
    run_id: str | None,
    dry_run: bool,
    as_json: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """Send the events that entered VEBUS_EVENTS between --from and --to through the
    routes again, as EventBridge's archive replay does.

    Events are matched with the running routes (those `vebus routes apply` stored, else
    the config file's) exactly as the filter matches them, and
    each matching route (only --route if given) gets a copy that keeps its CloudEvent id,
    gains the `vebusreplay` extension, and has the Msg-Id
    `replay:<original>:<route>:<run id>`. A progress bar shows on a terminal; a summary
    per route follows. Exits 1 if any copy was not stored.

    \b
    Example:
      vebus replay --from 2025-01-02T10:00:00Z --to 2025-01-02T11:00:00Z
      vebus replay --from 3h --to 2h --route vm-off-to-slack
      vebus replay --from 1d --dry-run
    """
    end = end or utcnow()
    if start >= end:
        raise click.BadParameter("must be before --to (default: now)", param_hint="--from")
    config = load_or_default(config_path)
    run_id = run_id or uuid.uuid4().hex[:8]
    if names.token(run_id) != run_id:
        raise click.BadParameter("letters, digits, _ and - only", param_hint="--run-id")
    summary = Summary(
        run_id=run_id,
        start=format_time(start),
        end=format_time(end),
        dry_run=dry_run,
    )
    with progress("replaying", None) as bar:
        run_async(_run, config, nats_url, start, end, route, rate, summary, bar)
    if as_json:
        doc: dict[str, Any] = asdict(summary)
        doc["from"], doc["to"] = doc.pop("start"), doc.pop("end")
        click.echo(json.dumps(doc, indent=2))
    else:
        _print(summary)
    if not summary.ok():
        raise SystemExit(1)
