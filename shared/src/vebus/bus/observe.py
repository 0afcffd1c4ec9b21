"""How the wire reports what it does, without knowing who listens.

The consumer loop and the publisher observe every message they move (STYLE.md, habit 8:
observability in one wrapper, not in every handler), but the wire sits below the service
runtime that owns tracing and metrics. So the wire defines what it reports, here, and the
runtime plugs an implementation in (vebus.runtime.telemetry.Telemetry) for the tasks of a
service, the way FastStream's middlewares are handed to its broker: outside a service (the
CLI, a test) nothing is observed and each hook costs one `None` check.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import Any, Protocol

from nats.aio.msg import Msg

__all__ = [
    "BusObserver",
    "ConsumerObserver",
    "Handling",
    "PublishObservation",
    "current",
    "reset",
    "use",
]


#: one message being handled: an opaque token the observer hands out in `begin` and takes
#: back in `end`
Handling = Any


class ConsumerObserver(Protocol):
    """Observes the messages of one durable consumer."""

    def begin(self, msg: Msg) -> Handling:
        """A handler starts on `msg` (in the task that handles it)."""
        ...

    def end(self, handling: Handling, outcome: str, error: BaseException | None = None) -> None:
        """The handler ended: ack, nak, term or error."""
        ...

    def close(self) -> None:
        """The worker stopped following this consumer (stopped, or its route removed)."""
        ...


class PublishObservation(Protocol):
    """One publish in progress."""

    def stored(self) -> None:
        """JetStream acknowledged it."""
        ...

    def failed(self, error: BaseException, reason: str) -> None:
        """It was refused or never acknowledged; `reason` is error, route_full or too_large."""
        ...

    def abandoned(self) -> None:
        """It ended without an outcome of its own (cancelled, or handed to a retry)."""
        ...


class BusObserver(Protocol):
    """What a service's runtime provides to the wire."""

    def consumer(self, stream: str, durable: str) -> ConsumerObserver:
        """The observer of a consumer loop about to start."""
        ...

    def publishing(
        self, subject: str, headers: MutableMapping[str, str], body_size: int
    ) -> PublishObservation:
        """A publish starts; the observer may add headers (trace context) before it goes."""
        ...


_CURRENT: ContextVar[BusObserver | None] = ContextVar("vebus_bus_observer", default=None)


def current() -> BusObserver | None:
    """The observer of the service running this code; None outside a service."""
    return _CURRENT.get()


def use(observer: BusObserver | None) -> Token[Any]:
    """Make `observer` current for this task and the tasks it starts (returns the token
    `reset` takes)."""
    return _CURRENT.set(observer)


def reset(token: Token[Any]) -> None:
    """Undo `use`."""
    _CURRENT.reset(token)
