"""A real HTTP server that records every request: the sink the tests deliver to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from vebus.embedded import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingSink:
    """Answers each request with `status` (or what `responder` returns) and records it."""

    port: int = 0
    status: int = 200
    responder: Callable[[Received], int] | None = None
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> RecordingSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Received(request.method, request.path, dict(request.headers), await request.read())
        self.received.append(rec)
        status = self.responder(rec) if self.responder else self.status
        if 200 <= status < 300:
            self.accepted.append(rec)
        self._changed.set()
        return web.Response(status=status, text="ok" if status < 300 else "failing on purpose")

    def accepted_ids(self) -> list[str]:
        return [r.headers.get("ce-id", "") for r in self.accepted]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until `predicate()` holds (checked on every request), or `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True
