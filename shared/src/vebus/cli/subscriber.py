"""`vebus subscriber`: the settings another program uses to read the events directly."""

from __future__ import annotations

import contextlib
import shlex

import click

from vebus import names
from vebus.cli._common import config_option, load_or_default, nats_url_option
from vebus.local.natsauth import DEFAULT_AUTH_PATH, is_local_url, password_var, read_env_file

__all__ = ["subscriber"]

USER = "subscriber"


@click.command()
@config_option
@nats_url_option
def subscriber(config_path: str, nats_url: str | None) -> None:
    """Print the settings a program uses to read the events directly, at-least-once.

    Any program may follow vebus's events (subjects `vebus.events.<vcenter>.<class>`) as
    the NATS user `subscriber` of deploy/nats/auth.conf, through the durable consumer
    `subscriber` on the VEBUS_EVENTS stream: that user may read events that way and do
    nothing else (no publishing, no other consumer, no stream change, no dead letters).
    examples/subscriber/follow.py is such a program (nats-py); it takes these variables
    (NATS_URL, NATS_USER, NATS_PASSWORD: the names the `nats` command uses too).

    The password is the nats-server's VEBUS_NATS_SUBSCRIBER_PASSWORD; for `vebus up
    --nats-auth` it is printed from .vebus/nats-auth.env when run in that folder.

    \b
    Example:
      eval "$(vebus subscriber)" && python examples/subscriber/follow.py
    """
    config = load_or_default(config_path)
    url = nats_url or config.nats.url
    password = None
    if is_local_url(url) and DEFAULT_AUTH_PATH.is_file():
        with contextlib.suppress(OSError):
            password = read_env_file(DEFAULT_AUTH_PATH).get(password_var(USER))
    lines = {"NATS_URL": url, "NATS_USER": USER, "NATS_PASSWORD": password}
    for name, value in lines.items():
        if value is None:
            click.echo(f"# {name}: the nats-server's {password_var(USER)} (not found here)")
        else:
            click.echo(f"export {name}={shlex.quote(value)}")
    click.echo(f"# stream {names.EVENTS_STREAM}, durable consumer {names.SUBSCRIBER_DURABLE}, "
               f"subjects {names.EVENTS_SUBJECTS}")  # fmt: skip
    if config.nats.tls is not None:
        click.echo(f"# TLS: ca_file {config.nats.tls.ca_file} (and a client certificate if "
                   "the server verifies clients)")  # fmt: skip
