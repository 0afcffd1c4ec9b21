"""What every page handler reads from: the connections, the route store, the live hub, and
the few figures the console samples itself (each route's delivery rate, the chart)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import jinja2
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from vebus import aio
from vebus.bus.status import discover
from vebus.config import Config
from vebus.routing.source import RouteSource
from vebus.routing.store import RouteStore
from vebus_console.auth import Authenticator
from vebus_console.chart import MinuteCounts, count_minutes
from vebus_console.deadletters import DeadletterApi
from vebus_console.live import LiveHub

__all__ = ["Console", "RouteCounters"]

log = logging.getLogger(__name__)

#: how often each route's delivered and failed counts are sampled from the replicas
SAMPLE_EVERY = 10.0
#: how long the chart's counts are reused
CHART_TTL = 15.0


@dataclass
class RouteCounters:
    """Per route, summed over every replica now answering: delivered and failed since the
    replicas started, and the delivery rate between the last two samples."""

    delivered: dict[str, float] = field(default_factory=dict)
    failed: dict[str, float] = field(default_factory=dict)
    rate: dict[str, float] = field(default_factory=dict)
    at: float = 0.0


@dataclass(kw_only=True)
class Console:
    """The console's state, shared by the handlers of one process."""

    config: Config
    nc: Client
    js: JetStreamContext
    store: RouteStore
    routes: RouteSource
    hub: LiveHub
    auth: Authenticator
    dlq: DeadletterApi
    templates: jinja2.Environment
    https: bool = False
    #: the config file's `routes:` as written (run while none are stored)
    config_routes: list[Any] = field(default_factory=list)
    counters: RouteCounters = field(default_factory=RouteCounters)
    _chart: tuple[float, MinuteCounts] | None = None
    _chart_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def sample_routes(self) -> None:
        """Sum every replica's per-route counters; the rate from the previous sample."""
        replies = await discover(self.nc, timeout=1.0)
        now = time.monotonic()
        delivered: dict[str, float] = {}
        failed: dict[str, float] = {}
        for reply in replies:
            for ep in reply.get("endpoints") or []:
                data = ep.get("data") if isinstance(ep, dict) else None
                if not isinstance(data, dict):
                    continue
                for route, c in (data.get("routes") or {}).items():
                    delivered[route] = delivered.get(route, 0.0) + float(c.get("delivered", 0))
                    failed[route] = failed.get(route, 0.0) + float(c.get("failed", 0))
        before = self.counters
        rate: dict[str, float] = {}
        if before.at and now - before.at < 4 * SAMPLE_EVERY:
            elapsed = max(now - before.at, 1e-3)
            for route, n in delivered.items():
                rate[route] = max(0.0, n - before.delivered.get(route, 0.0)) / elapsed
        self.counters = RouteCounters(delivered=delivered, failed=failed, rate=rate, at=now)

    async def sample_forever(self, stopping: asyncio.Event) -> None:
        async for _ in aio.every(SAMPLE_EVERY, stopping):
            try:
                await self.sample_routes()
            except (nats.errors.Error, TimeoutError) as e:
                log.debug("sampling the route counters failed: %r", e)

    async def chart(self) -> MinuteCounts:
        """The last hour's counts, reused for CHART_TTL seconds."""
        async with self._chart_lock:
            if self._chart is None or time.monotonic() - self._chart[0] > CHART_TTL:
                self._chart = (time.monotonic(), await count_minutes(self.js))
            return self._chart[1]
