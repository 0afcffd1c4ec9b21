"""What building a dispatcher sink may use (the Sink protocol itself is vebus.delivery.sink)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.js import JetStreamContext

from vebus.config import Route

if TYPE_CHECKING:
    import aiohttp

__all__ = ["SinkContext"]


@dataclass(frozen=True, kw_only=True)
class SinkContext:
    """What building a sink may use: its route, the NATS connection, the User-Agent, and
    the HTTP session the process's HTTP sinks share (None: each makes its own)."""

    route: Route
    nc: Client
    js: JetStreamContext
    user_agent: str = "vebus-dispatcher"
    http: aiohttp.ClientSession | None = None
