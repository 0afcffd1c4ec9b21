"""What a route delivers to: one small protocol, whatever is behind it (a sink, a function)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from vebus.bus.cloudevent import CloudEvent

__all__ = ["Sink"]


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
