"""`vebus tail`: print events as they pass, as lines, CloudEvents in JSON, or NATS envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import json

import click
import nats.errors
from nats.aio.msg import Msg

from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.bus.http import to_json
from vebus.cli._common import config_option, connect, fail, load_or_default, nats_url_option
from vebus.errors import InvalidEventError

__all__ = ["format_json", "format_line", "subject_problem", "tail"]


def format_line(msg: Msg) -> str:
    """One line for a message: time, type, id, source, and the vSphere message if any."""
    try:
        ev = from_headers(msg.headers, msg.data)
    except InvalidEventError as e:
        return f"{msg.subject}  (not a CloudEvent: {e})"
    text = ""
    try:
        data = ev.json_data()
        if isinstance(data, dict):
            text = str(data.get("FullFormattedMessage") or "")
    except InvalidEventError:
        pass
    return f"{ev.time or '-'}  {ev.type}  id={ev.id}  {ev.source}  {text}".rstrip()


def format_json(msg: Msg) -> str | None:
    """The message's CloudEvent in the JSON event format, one line; None if it is none."""
    try:
        return to_json(from_headers(msg.headers, msg.data)).decode("utf-8")
    except InvalidEventError:
        return None


def format_envelope(msg: Msg) -> str:
    """The NATS message as JSON: subject, headers and the body as text."""
    envelope = {
        "subject": msg.subject,
        "headers": msg.headers or {},
        "data": msg.data.decode(errors="replace"),
    }
    return json.dumps(envelope)


def subject_problem(subject: str) -> str | None:
    """Why `subject` cannot be subscribed to (None: it can), in words that say what to fix."""
    if not subject:
        return "empty: give a subject such as 'vebus.events.>'"
    if any(c in subject for c in " \t\r\n"):
        return f"{subject!r} contains white space: subjects cannot"
    tokens = subject.split(".")
    if not all(tokens):
        return f"{subject!r} has an empty token: no '.' at either end, nor two in a row"
    for index, tok in enumerate(tokens):
        if tok == ">" and index != len(tokens) - 1:
            return f"{subject!r}: '>' matches the rest of a subject and must be its last token"
        if tok not in ("*", ">") and ("*" in tok or ">" in tok):
            return f"{subject!r}: wildcards '*' and '>' must be whole tokens, as in 'a.*.c'"
    return None


def _subject(_: click.Context, param: click.Parameter, value: str) -> str:
    problem = subject_problem(value)
    if problem is not None:
        raise click.BadParameter(problem, param=param)
    return value


@click.command()
@click.argument("subject", default=names.EVENTS_SUBJECTS, callback=_subject)
@config_option
@nats_url_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print each event as one CloudEvent in JSON (structured mode) a line: what "
    "`vebus routes test --event -` and the webhook source take.",
)
@click.option(
    "--envelope",
    is_flag=True,
    help="Print each NATS message as JSON: its subject, headers and body as text "
    "(with or without --json).",
)
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    help="Stop after this many messages (with --json: events) (0: never).",
)
def tail(
    subject: str,
    config_path: str,
    nats_url: str | None,
    as_json: bool,
    envelope: bool,
    count: int,
) -> None:
    """Print events live as they are published on SUBJECT (core NATS, nothing is consumed).

    One line per message: time, type, id, source and the vSphere message. With --json,
    the CloudEvent itself, one JSON object a line, as the JSON event format (structured
    mode) writes it: what `vebus routes test --event -` and the webhook source take as
    they are (a message that is not a CloudEvent goes to standard error instead). With
    --envelope, the NATS message as it is: subject, headers, body; for looking at what
    vebus adds on the wire.

    \b
    Examples:
      vebus tail                                         # every event
      vebus tail 'vebus.events.vcsim.VmPoweredOffEvent'  # one class from one vCenter
      vebus tail 'vebus.routes.>'                        # what the filter routed
      vebus tail --json --count 1 | vebus routes test --route vm-off --event -
    """
    config = load_or_default(config_path)

    async def run() -> None:
        nc = await connect(config, nats_url)
        done = asyncio.Event()
        seen = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal seen
            if done.is_set():  # --count reached: messages already delivered stay unprinted
                return
            if envelope:
                click.echo(format_envelope(msg))
            elif not as_json:
                click.echo(format_line(msg))
            elif (line := format_json(msg)) is not None:
                click.echo(line)
            else:  # standard output stays CloudEvents only
                click.echo(format_line(msg), err=True)
                return
            seen += 1
            if count and seen >= count:
                done.set()

        try:
            await nc.subscribe(subject, cb=on_msg)
            await nc.flush()  # the server has the subscription: "listening" is true
            click.echo(f"listening on {subject} (Ctrl-C to stop)", err=True)
            await done.wait()
        except nats.errors.Error as e:
            fail(f"cannot subscribe to {subject}: {e}")
        finally:
            with contextlib.suppress(nats.errors.Error):
                await nc.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
