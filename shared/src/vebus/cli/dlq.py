"""`vebus dlq`: list, show, replay and purge dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import click
from nats.js import JetStreamContext

from vebus import names
from vebus.bus.dlq import (
    DeadLetter,
    ReplayOutcome,
    Selection,
    delete_dead_letter,
    get_dead_letter,
    iter_dead_letters,
    replay_dead_letter,
    replay_selection,
)
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
from vebus.cli._progress import progress
from vebus.config import Config
from vebus.errors import DeadLetterNotFoundError, ErrorCode

__all__ = ["dlq"]

#: characters of the error message shown in `list`
ERROR_WIDTH = 60


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (events that could not be delivered).

    A dead letter is an event that exhausted its route's delivery attempts, failed in a way
    retrying cannot fix, or was found poisonous; it keeps the original CloudEvent and why
    it failed. Its ID is its sequence number in the VEBUS_DLQ stream.

    \b
    Example:
      vebus dlq list --route vm-off-to-slack --since 1h
      vebus dlq show 42
      vebus dlq replay 42
    """


# ---------------------------------------------------------------------------- plumbing


@contextlib.asynccontextmanager
async def _session(config: Config, nats_url: str | None) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a NATS that has VEBUS_DLQ; NATS failures become one line."""
    async with nats_session(config, nats_url, stream=names.DLQ_STREAM) as js:
        yield js


def _time_option(name: str, help_: str) -> Callable[..., Any]:
    return click.option(name, callback=time_param, metavar="TIME", help=help_)


_since = _time_option(
    "--since", "Only dead letters stored at or after TIME (RFC 3339, or an age: 1h, 30m, 7d)."
)
_until = _time_option("--until", "Only dead letters stored before TIME (RFC 3339, or an age).")
#: dead letter IDs are JetStream sequence numbers: unsigned 64-bit
_ID = click.IntRange(min=1, max=2**64 - 1)


def _route_name(_: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: a route name as routes are named (a NATS subject token), or exit 2.

    Without it `a.b` or `*` would silently select the dead letters of route `a_b` or `_`.
    """
    if value is not None and names.token(value) != value:
        raise click.BadParameter(
            f"{value!r} is not a route name: route names use only letters, digits, _ and -",
            param=param,
        )
    return value


def _route_option(help_: str) -> Callable[..., Any]:
    return click.option("--route", callback=_route_name, help=help_)


_code = click.option(
    "--code",
    type=click.Choice([c.value for c in ErrorCode], case_sensitive=False),
    help="Only the dead letters with this error code.",
)


def _selection(
    route: str | None, code: str | None, since: dt.datetime | None, until: dt.datetime | None
) -> Selection:
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(
            "must be before --until: no dead letter was stored in that window",
            param_hint="--since",
        )
    return Selection(route=route, code=code.upper() if code else None, since=since, until=until)


def _short_time(value: str | None) -> str:
    """`2026-01-02T03:04:05.123456Z` as `2026-01-02 03:04:05Z`."""
    if not value:
        return "-"
    date, _, rest = value.partition("T")
    if not rest:
        return value
    clock = rest.split(".")[0].rstrip("Z").split("+")[0]
    return f"{date} {clock}Z"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _describe(dl: DeadLetter) -> str:
    ev = dl.event()
    event = f"{ev.type} id {ev.id}" if ev else "not a CloudEvent"
    return f"{dl.id} ({event}; route {dl.route}, {dl.code})"


# ---------------------------------------------------------------------------- list

_COLUMNS = ("ID", "STORED", "ROUTE", "CODE", "STATUS", "ATTEMPTS", "EVENT TYPE", "EVENT ID")


def _row(dl: DeadLetter) -> list[str]:
    s = dl.summary()
    return [
        str(dl.id),
        _short_time(dl.stored_at),
        dl.route,
        dl.code or "-",
        str(dl.status) if dl.status is not None else "-",
        str(dl.attempts),
        str(s["event_type"] or "-"),
        str(s["event_id"] or "-"),
        _shorten(dl.error, ERROR_WIDTH) or "-",
    ]


def _print_plain(rows: list[list[str]]) -> None:
    header = [*_COLUMNS, "ERROR"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, r[-1]]).rstrip())


def _print_rich(rows: list[list[str]]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich comes with the `embedded` extra
        return False
    table = Table(caption=f"{len(rows)} dead letter(s)", caption_justify="left")
    for name in _COLUMNS:
        numeric = name in ("ID", "STATUS", "ATTEMPTS")
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=numeric or name in ("STORED", "CODE"),
            overflow="fold",
        )
    table.add_column("ERROR", overflow="fold", min_width=20, max_width=ERROR_WIDTH)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    return True


async def _select(config: Config, nats_url: str | None, sel: Selection) -> list[DeadLetter]:
    async with _session(config, nats_url) as js:
        return [dl async for dl in iter_dead_letters(js, selection=sel)]


@dlq.command(name="list")
@_route_option("Only the dead letters of this route.")
@_code
@_since
@_until
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@config_option
@nats_url_option
def list_(
    route: str | None,
    code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    as_json: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """List the stored dead letters, oldest first.

    Shows each one's ID, when it was stored, its route, error code, last HTTP status,
    attempts, the event's type and id, and the error (shortened; `vebus dlq show ID` has
    all of it). Filters combine: every one given must hold.

    \b
    Example:
      vebus dlq list --route vm-off-to-slack --code HTTP_5XX
      vebus dlq list --since 2h --until 1h
      vebus dlq list --since 2025-01-02T00:00:00Z --json | jq '.[].event_id'
    """
    config = load_or_default(config_path)
    letters: list[DeadLetter] = run_async(
        _select, config, nats_url, _selection(route, code, since, until)
    )
    if as_json:
        click.echo(json.dumps([dl.summary() for dl in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [_row(dl) for dl in letters]
    if not (sys.stdout.isatty() and _print_rich(rows)):
        _print_plain(rows)


# ---------------------------------------------------------------------------- show


def _print_show(dl: DeadLetter) -> None:
    def line(name: str, value: object) -> None:
        click.echo(f"  {name + ':':<17} {value if value not in (None, '') else '-'}")

    click.echo(f"dead letter {dl.id}")
    line("route", dl.route)
    line("sink", dl.sink)
    line("code", dl.code)
    line("status", dl.status)
    line("attempts", f"{dl.attempts} (exhausted: {dl.exhausted or '-'})")
    line("first attempt", dl.first_attempt)
    line("last attempt", dl.last_attempt)
    line("stored", dl.stored_at)
    line("msg id", dl.msg_id)
    line("error", dl.error)
    if dl.error_detail:
        click.echo("detail")
        for text in dl.error_detail.rstrip("\n").splitlines():
            click.echo(f"  {text}")
    ev = dl.event()
    if ev is not None:
        click.echo("event")
        for name, value in ev.attributes().items():
            line(name, value)
        shown = {f"ce-{k}" for k in ev.attributes()} | {"content-type"}
        other = {k: v for k, v in dl.headers.items() if k.lower() not in shown}
    else:
        click.echo("event: not a valid CloudEvent; its headers:")
        other = dl.headers
    if other:
        click.echo("headers")
        for name, value in other.items():
            line(name, value)
    kind, data = dl.data()
    click.echo(f"data ({len(dl.body)} bytes{', base64' if kind == 'base64' else ''})")
    if kind == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif data:
        click.echo(data)


async def _get(config: Config, nats_url: str | None, ident: int) -> DeadLetter:
    async with _session(config, nats_url) as js:
        return await get_dead_letter(js, ident)


@dlq.command(short_help="Show one dead letter in full, with its event.")
@click.argument("ident", metavar="ID", type=_ID)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
@nats_url_option
def show(ident: int, as_json: bool, config_path: str, nats_url: str | None) -> None:
    """Show everything about dead letter ID: why it failed, the CloudEvent and its data.

    With --json, `event` is the CloudEvent in JSON (structured mode, as `vebus tail
    --json` prints it), which `vebus routes test --event -` takes as it is.
    Exits 1 if there is no dead letter with that ID.

    \b
    Example:
      vebus dlq show 42
      vebus dlq show 42 --json | jq .data
      vebus dlq show 42 --json | jq .event | vebus routes test --route vm-off --event -
    """
    dl: DeadLetter = run_async(_get, load_or_default(config_path), nats_url, ident)
    if as_json:
        click.echo(json.dumps(dl.detail(), indent=2, ensure_ascii=False))
    else:
        _print_show(dl)


# ---------------------------------------------------------------------------- replay, purge


def _choose(ident: int | None, sel: Selection, all_: bool) -> None:
    """Exactly one of ID, filters and --all (a usage error, exit 2, otherwise)."""
    given = sum((ident is not None, not sel.is_empty(), all_))
    if given != 1:
        raise click.UsageError(
            "give exactly one of ID, filters (--route, --code, --since, --until) or --all"
        )


def _refuse_unconfirmed(verb: str, bulk: bool, yes: bool) -> None:
    """A bulk operation without --yes needs a terminal to ask on: refuse (exit 2) if none."""
    if bulk and not yes and not sys.stdin.isatty():
        fail(f"refusing to {verb} dead letters in bulk without confirmation: add --yes", 2)


def _confirm(verb: str, count: int, sel: Selection, yes: bool) -> None:
    """Ask before a bulk operation; "no" aborts (exit 1)."""
    if not yes:
        click.confirm(f"{verb.capitalize()} {count} dead letter(s) ({sel.describe()})?", abort=True)


def _selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("ident", metavar="[ID]", required=False, type=_ID),
            _route_option("The dead letters of this route."),
            _code,
            _since,
            _until,
            click.option("--all", "all_", is_flag=True, help="Every dead letter."),
        ]
    ):
        fn = option(fn)
    return fn


@contextlib.contextmanager
def _stop_on_interrupt() -> Iterator[asyncio.Event]:
    """An event set by Ctrl-C (SIGINT): the work in flight finishes, then the loop stops."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if not stopping.is_set():
            click.echo("interrupted: stopping after the dead letter in flight", err=True)
        stopping.set()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        yield stopping
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _replay(
    config: Config,
    nats_url: str | None,
    ident: int | None,
    sel: Selection,
    to_route: str | None,
    rate: float,
    yes: bool,
) -> tuple[int, int, bool]:
    """Replay one dead letter or a selection; returns (replayed, failed, interrupted)."""
    async with _session(config, nats_url) as js:
        if to_route is not None:
            check_route_name(await running_routes(config, js), "--to-route", to_route)
        if ident is not None:
            done = await replay_dead_letter(js, await get_dead_letter(js, ident), to_route=to_route)
            dl_line = f"replayed {ident} to route {done.route}"
            click.echo(dl_line + (" (it was there already)" if done.duplicate else ""))
            return 1, 0, False
        info = await js.stream_info(names.DLQ_STREAM)
        upto = int(info.state.last_seq or 0)
        count = 0
        async for _ in iter_dead_letters(js, selection=sel, upto=upto):
            count += 1
        if not count:
            return 0, 0, False
        _confirm("replay", count, sel, yes)
        counts = {"replayed": 0, "failed": 0, "gone": 0}
        with (
            progress("replaying", count) as bar,
            _stop_on_interrupt() as stopping,
        ):

            async def report(o: ReplayOutcome) -> None:
                counts[o.status] += 1
                bar.advance()
                if o.replayed is not None:
                    bar.echo(f"replayed {_describe(o.dead_letter)} to route {o.replayed.route}")
                elif o.status == "gone":
                    bar.echo(f"{o.dead_letter.id}: already gone (replayed or purged meanwhile)")
                else:
                    bar.echo(f"{o.dead_letter.id}: {o.error}", err=True)

            await replay_selection(
                js,
                sel,
                to_route=to_route,
                rate=rate,
                upto=upto,
                stopping=stopping,
                on_outcome=report,
            )
        return counts["replayed"], counts["failed"], stopping.is_set()


@dlq.command(short_help="Send dead letters' events to their route again.")
@_selection_options
@click.option(
    "--to-route",
    callback=_route_name,
    help="Send the events to this route instead of the one they failed on.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    help="Dead letters per second, 0 for no limit (default: the config's "
    "deadletter.replay_rate, 50).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replaying in bulk.")
@config_option
@nats_url_option
def replay(
    ident: int | None,
    route: str | None,
    code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    all_: bool,
    to_route: str | None,
    rate: float | None,
    yes: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """Send dead letters' events to their route again, then delete the dead letters.

    Give one dead letter's ID, filters (--route, --code, --since, --until: all must hold),
    or --all. Each event keeps its CloudEvent id, gets the Msg-Id
    `<original>:replay:<dead-letter id>` and a `vebusreplay` extension with the time of the
    replay; its dead letter is deleted only once JetStream has stored it. Dead letters stored
    after the command started (the replayed events failing again) are not replayed. Bulk
    replays ask first (without a terminal to ask on they need --yes), go at --rate per
    second, and show a progress bar on a terminal. Ctrl-C stops after the dead letter in
    flight; if the command is killed instead, running it again within the stream's
    duplicate window (2 minutes by default) does not store the one in flight twice.

    \b
    Example:
      vebus dlq replay 42
      vebus dlq replay --route vm-off-to-slack --since 1h --yes
      vebus dlq replay --all --rate 10
      vebus dlq replay 42 --to-route vm-off-to-teams
    """
    sel = _selection(route, code, since, until)
    _choose(ident, sel, all_)
    _refuse_unconfirmed("replay", ident is None, yes)
    config = load_or_default(config_path)
    pace = config.deadletter.replay_rate if rate is None else rate
    done, failed, interrupted = run_async(
        _replay, config, nats_url, ident, sel, to_route, pace, yes
    )
    click.echo(f"replayed {done} dead letter(s)" + (f", {failed} failed" if failed else ""))
    if interrupted:
        sys.exit(130)
    if failed:
        sys.exit(1)


async def _purge(
    config: Config, nats_url: str | None, ident: int | None, sel: Selection, yes: bool
) -> int:
    """Delete one dead letter or a selection; returns how many."""
    async with _session(config, nats_url) as js:
        if ident is not None:
            dl = await get_dead_letter(js, ident)
            await delete_dead_letter(js, ident)
            click.echo(f"purged {_describe(dl)}")
            return 1
        letters = [dl async for dl in iter_dead_letters(js, selection=sel)]
        if not letters:
            return 0
        _confirm("purge", len(letters), sel, yes)
        done = 0
        for dl in letters:
            try:
                await delete_dead_letter(js, dl.id)
            except DeadLetterNotFoundError:
                click.echo(f"{dl.id}: already gone (replayed or purged meanwhile)", err=True)
                continue
            click.echo(f"purged {_describe(dl)}")
            done += 1
        return done


@dlq.command(short_help="Delete dead letters without replaying them.")
@_selection_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask before purging in bulk.")
@config_option
@nats_url_option
def purge(
    ident: int | None,
    route: str | None,
    code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    all_: bool,
    yes: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """Delete dead letters for good, without replaying them.

    Give one dead letter's ID, filters (--route, --code, --since, --until: all must hold),
    or --all. Bulk purges ask first; without a terminal to ask on they need --yes.

    \b
    Example:
      vebus dlq purge 42
      vebus dlq purge --route vm-off-to-slack --yes
      vebus dlq purge --until 7d --yes
    """
    sel = _selection(route, code, since, until)
    _choose(ident, sel, all_)
    _refuse_unconfirmed("purge", ident is None, yes)
    config = load_or_default(config_path)
    done: int = run_async(_purge, config, nats_url, ident, sel, yes)
    click.echo(f"purged {done} dead letter(s)")
