"""What every sink is: something that takes one event and says only how it failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext

from vebus.cloudevent import CloudEvent
from vebus.config import Route

__all__ = ["Sink", "SinkContext"]


class Sink(Protocol):
    """Delivers one event; returns when the destination has it, raises a DeliveryError if not.

    `headers` are the NATS message's headers (the sink takes `traceparent` from them).
    The caller bounds each call with the route's `timeout`; a sink needs no timer of its own.
    Calls may overlap (up to the route's `max_in_flight`). `close` releases connections,
    sessions and threads once the route has stopped.
    """

    @property
    def kind(self) -> str:
        """The sink kind as written in the config (`webhook`, `console`, ...)."""
        ...

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class SinkContext:
    """What building a sink may use: its route, the NATS connection, the User-Agent."""

    route: Route
    nc: Client
    js: JetStreamContext
    user_agent: str = "vebus-dispatcher"
