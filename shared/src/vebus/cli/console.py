"""`vebus console token|hash`: the hashes `console.users` takes (docs/console.md)."""

from __future__ import annotations

import sys

import click

from vebus.cli._common import fail
from vebus.passwords import hash_secret, new_token

__all__ = ["console"]

_ENV_HELP = (
    "Print the hash as a line for a .env file, NAME='scrypt$...' (single-quoted, so that "
    "Docker Compose takes its $ literally), e.g. VEBUS_CONSOLE_TOKEN_HASH for compose.yaml."
)


def _print_hash(digest: str, env: str | None) -> None:
    click.echo(f"{env}='{digest}'" if env else digest)


def _check_env(env: str | None) -> None:
    if env is not None and not (env.replace("_", "a").isalnum() and not env[0].isdigit()):
        fail(f"--env {env!r}: expected a variable name (letters, digits and _)", 2)


@click.group()
def console() -> None:
    """Sign-ins for the web console: hashes for `console.users` (docs/console.md)."""


@console.command()
@click.option("--env", metavar="NAME", help=_ENV_HELP)
def token(env: str | None) -> None:
    """Make a random bearer token and print its hash.

    The token goes to standard error, shown this once: sign in with it (the page's Token
    field, or `Authorization: Bearer <token>`). The hash goes to standard output, for
    `token_hash` in console.users, so that it can be appended to a file directly.

    \b
    Example (Docker Compose: README, "Run with Docker Compose"):
      vebus console token --env VEBUS_CONSOLE_TOKEN_HASH >> .env
    """
    _check_env(env)
    secret = new_token()
    click.echo(f"console token (shown once; sign in with it): {secret}", err=True)
    _print_hash(hash_secret(secret), env)


@console.command(name="hash")
@click.option("--env", metavar="NAME", help=_ENV_HELP)
def hash_(env: str | None) -> None:
    """Read a password (without echo on a terminal; else one line of standard input) and
    print its hash, for `password_hash` in console.users."""
    _check_env(env)
    if sys.stdin.isatty():
        secret = click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        secret = sys.stdin.readline().rstrip("\n")
    if not secret:
        fail("an empty password cannot sign in", 2)
    _print_hash(hash_secret(secret), env)
