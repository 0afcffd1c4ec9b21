"""The event loop a service runs on: uvloop where it is installed, else asyncio's own.

`VEBUS_EVENT_LOOP=asyncio` chooses the standard loop; `uvloop` (the default) falls back to
it, with one log line, when uvloop cannot be imported (a platform without a wheel). vebus
needs nothing of either beyond asyncio's API: the tests run on the standard loop.

Why: asyncio's own socket writes and callbacks were 28% of the dispatcher's py-spy samples
and about 13% of the filter's (loadtest/RESULTS.md, "Profiles"); uvloop runs them in C.
`python -m loadtest.loops` measures one loop against the other on the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from vebus import names

__all__ = ["LOOPS", "chosen", "run"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the values VEBUS_EVENT_LOOP takes
LOOPS = ("uvloop", "asyncio")


def chosen(env: dict[str, str] | None = None) -> str:
    """The loop VEBUS_EVENT_LOOP asks for (`uvloop` when unset); ValueError for another."""
    value = (os.environ if env is None else env).get(names.ENV_EVENT_LOOP, "").strip().lower()
    value = value or "uvloop"
    if value not in LOOPS:
        raise ValueError(f"{names.ENV_EVENT_LOOP}={value!r}: expected one of {', '.join(LOOPS)}")
    return value


def _factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for `name`; None for asyncio's default."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed: running on asyncio's own event loop")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None) -> T:
    """`asyncio.run(main)` on the loop VEBUS_EVENT_LOOP (or `loop`) chooses."""
    try:
        factory = _factory(loop or chosen())
    except ValueError:
        main.close()
        raise
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
