"""`vebus tls init`: a CA and the NATS server and client certificates, for compose or a lab."""

from __future__ import annotations

import os
from pathlib import Path

import click

from vebus.cli._common import fail
from vebus.local.tls import LOCAL_HOSTS, ensure_local_tls

__all__ = ["tls"]


@click.group()
def tls() -> None:
    """Make the certificates TLS to NATS needs (docs/security.md)."""


@tls.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A name or address the NATS servers are reached at (repeatable; default "
    f"{', '.join(LOCAL_HOSTS)}). Compose: nats-1, nats-2, nats-3 and localhost.",
)
@click.option(
    "--uid",
    type=click.IntRange(min=0),
    help="Give the files to this user id (the containers' 10001: they run as it).",
)
def init(folder: Path, hosts: tuple[str, ...], uid: int | None) -> None:
    """Write a CA (ca.pem, ca-key.pem), a certificate for the NATS servers (server.pem,
    server-key.pem: for client connections and cluster routes) and one for the vebus
    clients (client.pem, client-key.pem) into FOLDER, unless they are there already.

    Keys are mode 0600. For production, use your own CA (docs/security.md shows openssl
    commands); this is for compose, a lab, or tests.

    \b
    Example (compose: the containers run as uid 10001):
      vebus tls init deploy/compose/tls --host nats-1 --host nats-2 --host nats-3 \\
        --host localhost --host 127.0.0.1 --uid 10001
    """
    made = not (folder / "ca.pem").exists()
    try:
        local = ensure_local_tls(folder, hosts or LOCAL_HOSTS)
        if uid is not None:
            for path in (folder, *folder.iterdir()):
                os.chown(path, uid, uid)
    except OSError as e:
        fail(f"{folder}: {e.strerror or e}", 1)
    state = "written" if made else "already there (kept)"
    click.echo(f"{folder}: CA, server and client certificates {state}")
    click.echo(f"  CA: {local.ca_file}  server: {local.server_cert}  client: {local.client_cert}")
