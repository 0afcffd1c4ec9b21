"""A sink's own worker threads, for client libraries that block (smtplib, boto3, pyvmomi).

Each such sink runs its blocking calls on its own pool, sized to the route's
`max_in_flight`, so that a slow SMTP server or vCenter neither waits behind another
route's calls in asyncio's shared default pool nor holds them up.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["SinkThreads"]

P = ParamSpec("P")
T = TypeVar("T")


class SinkThreads:
    """At most `size` blocking calls at once, each on a thread of this pool."""

    def __init__(self, name: str, size: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, size), thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on a pool thread. If the caller gives up (the route's
        timeout), the call still runs to its end: blocking calls must have timeouts of
        their own."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Wait for the calls still running, off the event loop."""
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
