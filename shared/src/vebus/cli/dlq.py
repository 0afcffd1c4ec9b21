"""`vebus dlq`: list, show, replay and purge dead letters."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import click
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from vebus import subjects
from vebus.cli._common import (
    config_option,
    connect,
    fail,
    load_or_default,
    nats_url_option,
    run_async,
)
from vebus.dlq import (
    DeadLetter,
    DeadLetterNotFoundError,
    ErrorCode,
    delete_dead_letter,
    get_dead_letter,
    iter_dead_letters,
    replay_dead_letter,
)
from vebus.errors import VebusError

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
      vebus dlq list --route vm-off-to-slack
      vebus dlq show 42
      vebus dlq replay 42
    """


# ---------------------------------------------------------------------------- plumbing


@contextlib.asynccontextmanager
async def _session(config_path: str, nats_url: str | None) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a NATS that has VEBUS_DLQ; NATS failures become one line."""
    config = load_or_default(config_path)
    url = nats_url or config.nats.url
    nc = await connect(config, nats_url)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(subjects.DLQ_STREAM)
        except NotFoundError:
            raise VebusError(
                f"NATS at {url} has no {subjects.DLQ_STREAM} stream: no vebus service has "
                "run against it yet (or --nats-url points at another server)"
            ) from None
        yield js
    except (nats.errors.Error, TimeoutError) as e:
        if isinstance(e, APIError) and e.description:
            raise VebusError(f"NATS at {url}: {e.description}") from None
        raise VebusError(f"NATS request to {url} failed: {e!r}") from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await nc.close()


async def _select(
    config_path: str, nats_url: str | None, route: str | None, code: str | None
) -> list[DeadLetter]:
    async with _session(config_path, nats_url) as js:
        return [dl async for dl in iter_dead_letters(js, route=route, code=code)]


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


def _choose(ident: int | None, route: str | None, all_: bool) -> None:
    """Exactly one of ID, --route and --all (a usage error, exit 2, otherwise)."""
    given = sum((ident is not None, route is not None, all_))
    if given != 1:
        raise click.UsageError("give exactly one of ID, --route ROUTE or --all")


def _refuse_unconfirmed(verb: str, what: str, bulk: bool, yes: bool) -> None:
    """A bulk operation without --yes needs a terminal to ask on: refuse (exit 2) if none."""
    if bulk and not yes and not sys.stdin.isatty():
        fail(f"refusing to {verb} {what} without confirmation: add --yes", 2)


def _confirm(verb: str, letters: Sequence[DeadLetter], what: str, yes: bool) -> None:
    """Ask before a bulk operation; "no" aborts (exit 1)."""
    if not yes:
        click.confirm(f"{verb.capitalize()} {len(letters)} dead letter(s) ({what})?", abort=True)


def _scope(route: str | None) -> str:
    return f"every dead letter of route {route}" if route else "every dead letter"


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


@dlq.command(name="list")
@click.option("--route", help="Only the dead letters of this route.")
@click.option(
    "--code",
    type=click.Choice([c.value for c in ErrorCode], case_sensitive=False),
    help="Only the dead letters with this error code.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@config_option
@nats_url_option
def list_(
    route: str | None, code: str | None, as_json: bool, config_path: str, nats_url: str | None
) -> None:
    """List the stored dead letters, oldest first.

    Shows each one's ID, when it was stored, its route, error code, last HTTP status,
    attempts, the event's type and id, and the error (shortened; `vebus dlq show ID` has
    all of it).

    \b
    Example:
      vebus dlq list --route vm-off-to-slack --code HTTP_5XX
      vebus dlq list --json | jq '.[].event_id'
    """
    letters: list[DeadLetter] = run_async(
        _select, config_path, nats_url, route, code.upper() if code else None
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


def _data(dl: DeadLetter) -> tuple[str, Any]:
    """The body as ("json", value), ("text", str) or ("base64", str)."""
    if not dl.body:
        return "text", ""
    try:
        return "json", json.loads(dl.body)
    except ValueError:
        pass
    try:
        return "text", dl.body.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(dl.body).decode("ascii")


def _as_json(dl: DeadLetter) -> dict[str, Any]:
    ev = dl.event()
    kind, data = _data(dl)
    out: dict[str, Any] = dict(dl.summary())
    out["msg_id"] = dl.msg_id
    out["event"] = ev.attributes() if ev else None
    out["headers"] = dl.headers
    out["data" if kind != "base64" else "data_base64"] = data
    return out


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
    kind, data = _data(dl)
    click.echo(f"data ({len(dl.body)} bytes{', base64' if kind == 'base64' else ''})")
    if kind == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif data:
        click.echo(data)


async def _get(config_path: str, nats_url: str | None, ident: int) -> DeadLetter:
    async with _session(config_path, nats_url) as js:
        return await get_dead_letter(js, ident)


@dlq.command(short_help="Show one dead letter in full, with its event.")
@click.argument("ident", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
@nats_url_option
def show(ident: int, as_json: bool, config_path: str, nats_url: str | None) -> None:
    """Show everything about dead letter ID: why it failed, the CloudEvent and its data.

    Exits 1 if there is no dead letter with that ID.

    \b
    Example:
      vebus dlq show 42
      vebus dlq show 42 --json | jq .data
    """
    dl: DeadLetter = run_async(_get, config_path, nats_url, ident)
    if as_json:
        click.echo(json.dumps(_as_json(dl), indent=2, ensure_ascii=False))
    else:
        _print_show(dl)


# ---------------------------------------------------------------------------- replay, purge


async def _apply(
    config_path: str,
    nats_url: str | None,
    ident: int | None,
    route: str | None,
    verb: str,
    yes: bool,
    action: Callable[[JetStreamContext, DeadLetter], Any],
) -> tuple[int, int]:
    """Run `action` on one dead letter or a selection; returns (done, failed)."""
    async with _session(config_path, nats_url) as js:
        if ident is not None:
            await action(js, await get_dead_letter(js, ident))
            return 1, 0
        letters = [dl async for dl in iter_dead_letters(js, route=route)]
        if not letters:
            return 0, 0
        _confirm(verb, letters, _scope(route), yes)
        done = failed = 0
        for dl in letters:
            try:
                await action(js, dl)
                done += 1
            except DeadLetterNotFoundError:
                click.echo(f"{dl.id}: already gone (replayed or purged meanwhile)", err=True)
            except VebusError as e:
                click.echo(f"{dl.id}: {e}", err=True)
                failed += 1
        return done, failed


def _selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("ident", metavar="[ID]", required=False, type=click.IntRange(min=1)),
            click.option("--route", help="Every dead letter of this route."),
            click.option("--all", "all_", is_flag=True, help="Every dead letter."),
        ]
    ):
        fn = option(fn)
    return fn


@dlq.command(short_help="Send dead letters' events to their route again.")
@_selection_options
@click.option(
    "--to-route",
    help="Send the events to this route instead of the one they failed on.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replaying --route or --all.")
@config_option
@nats_url_option
def replay(
    ident: int | None,
    route: str | None,
    all_: bool,
    to_route: str | None,
    yes: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """Send dead letters' events to their route again, then delete the dead letters.

    Give one dead letter's ID, --route ROUTE or --all. The event keeps its CloudEvent id
    and gets a `vebusreplay` extension with the time of the replay. A dead letter is
    deleted only once JetStream has stored the replayed event. --route and --all ask
    first; without a terminal to ask on they need --yes.

    \b
    Example:
      vebus dlq replay 42
      vebus dlq replay --route vm-off-to-slack --yes
      vebus dlq replay 42 --to-route vm-off-to-teams
    """
    _choose(ident, route, all_)
    _refuse_unconfirmed("replay", _scope(route), ident is None, yes)

    async def action(js: JetStreamContext, dl: DeadLetter) -> None:
        went = await replay_dead_letter(js, dl, to_route=to_route)
        click.echo(f"replayed {_describe(dl)} to route {went}")

    done, failed = run_async(_apply, config_path, nats_url, ident, route, "replay", yes, action)
    click.echo(f"replayed {done} dead letter(s)" + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)


@dlq.command(short_help="Delete dead letters without replaying them.")
@_selection_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask before purging --route or --all.")
@config_option
@nats_url_option
def purge(
    ident: int | None,
    route: str | None,
    all_: bool,
    yes: bool,
    config_path: str,
    nats_url: str | None,
) -> None:
    """Delete dead letters for good, without replaying them.

    Give one dead letter's ID, --route ROUTE or --all. --route and --all ask first;
    without a terminal to ask on they need --yes.

    \b
    Example:
      vebus dlq purge 42
      vebus dlq purge --route vm-off-to-slack --yes
    """
    _choose(ident, route, all_)
    _refuse_unconfirmed("purge", _scope(route), ident is None, yes)

    async def action(js: JetStreamContext, dl: DeadLetter) -> None:
        await delete_dead_letter(js, dl.id)
        click.echo(f"purged {_describe(dl)}")

    done, failed = run_async(_apply, config_path, nats_url, ident, route, "purge", yes, action)
    click.echo(f"purged {done} dead letter(s)" + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)
