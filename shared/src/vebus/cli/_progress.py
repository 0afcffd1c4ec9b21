"""A progress bar for long commands: rich's when stdout is a terminal, nothing otherwise."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

__all__ = ["Progress", "progress"]


class Progress:
    """Advances a bar (if there is one) and prints lines above it."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar = bar
        self._task = task

    @property
    def shown(self) -> bool:
        """Whether a bar is on screen."""
        return self._bar is not None

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def total(self, total: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def echo(self, line: str, *, err: bool = False) -> None:
        if self._bar is not None:
            self._bar.console.print(
                line, markup=False, highlight=False, style="red" if err else None
            )
        else:
            click.echo(line, err=err)


@contextlib.contextmanager
def progress(description: str, total: float | None) -> Iterator[Progress]:
    """A Progress with a rich bar when stdout is a terminal and rich is installed."""
    if not sys.stdout.isatty():
        yield Progress()
        return
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
    except ImportError:  # rich comes with the `embedded` extra
        yield Progress()
        return
    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
    ) as bar:
        yield Progress(bar, bar.add_task(description, total=total))
