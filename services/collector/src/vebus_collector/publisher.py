"""Publishing a vCenter's events in order with a bounded number of acks outstanding.

The window itself is the bus's (vebus.bus.pubwindow.PublishWindow: async publishes, acks
taken in order, `on_ack` only over a stored prefix, a message not acknowledged in time
published again with retries); the collector adds that a lost lease stops it between two
messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from nats.js import JetStreamContext

from vebus.bus.publish import OutgoingMessage
from vebus.bus.pubwindow import ACK_TIMEOUT, DEFAULT_WINDOW, PublishWindow
from vebus_collector.errors import LeaseLostError

__all__ = ["DEFAULT_WINDOW", "EventPublisher", "JetStreamPublisher"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class EventPublisher(Protocol):
    """What the follower publishes through (a fake records in unit tests)."""

    async def publish(
        self,
        items: Sequence[tuple[OutgoingMessage, T]],
        on_ack: Callable[[T], None],
    ) -> None: ...


class JetStreamPublisher(PublishWindow, Generic[T_contra]):
    """`EventPublisher` over JetStream async publishes; `allowed` False (the lease is
    gone) stops it with LeaseLostError."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = ACK_TIMEOUT,
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        def check() -> None:
            if allowed is not None and not allowed():
                raise LeaseLostError("lease lost while publishing")

        super().__init__(js, window=window, ack_timeout=ack_timeout, check=check)
        #: checked before each message: False stops publishing (a lost lease)
        self.allowed = allowed
