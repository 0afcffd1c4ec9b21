"""`vebus config check`: validate a config file without starting anything."""

from __future__ import annotations

import click

from vebus.cli._common import echo_config_errors
from vebus.config import load_config
from vebus.errors import ConfigError

__all__ = ["config"]


@click.group()
def config() -> None:
    """Work with vebus.yaml."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False), default="vebus.yaml")
def check(file: str) -> None:
    """Validate FILE: prints one line per problem (with its path) and exits 2 if any.

    Environment variables referenced as ${NAME} must be set, as they would be for the
    service that uses them.
    """
    try:
        cfg = load_config(file)
    except ConfigError as e:
        echo_config_errors(file, e.errors)
        raise SystemExit(2) from None
    checks = f", {len(cfg.checks)} check(s)" if cfg.checks else ""
    checks += f", {len(cfg.functions)} function(s)" if cfg.functions else ""
    click.echo(f"{file}: ok ({len(cfg.vcenters)} vCenter(s), {len(cfg.routes)} route(s){checks})")
