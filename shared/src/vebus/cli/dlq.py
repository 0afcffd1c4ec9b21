"""`vebus dlq`: list, show, replay and purge dead letters."""

from __future__ import annotations

import click

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (events that could not be delivered)."""
