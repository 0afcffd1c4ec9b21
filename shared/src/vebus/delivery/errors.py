"""Why one delivery attempt failed, in the terms the delivery handler decides on.

DeliveryError                  code (a vebus.bus.dlq.ErrorCode), HTTP status, Retry-After
├── RetryableDeliveryError     the sink may take the event later: HTTP 5xx (HTTP_5XX),
│                              429 (THROTTLED), no answer in time (TIMEOUT), refused or
│                              broken connection (CONNECTION_FAILURE); also a vebus
│                              RetryableError
└── PermanentDeliveryError     retrying cannot help: other 4xx (HTTP_4XX), an answer that is
                               neither success nor error (SINK_ERROR), an event the sink
                               cannot represent (INVALID_EVENT), a template that fails
                               (TEMPLATE_ERROR); also a vebus PermanentError

A sink raises one of the two leaves; anything else escaping a sink is a bug, and the
consumer loop treats it as a crashed attempt.
"""

from __future__ import annotations

from vebus.bus.dlq import ErrorCode
from vebus.errors import PermanentError, RetryableError, VebusError

__all__ = ["DeliveryError", "PermanentDeliveryError", "RetryableDeliveryError"]


class DeliveryError(VebusError):
    """A delivery attempt failed; `code` says how, `status` is the HTTP status if any."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        #: seconds the sink asked us to wait before the next attempt (`Retry-After`)
        self.retry_after = retry_after


class RetryableDeliveryError(DeliveryError, RetryableError):
    """The sink may accept the event if it is offered again later."""

    retryable = True


class PermanentDeliveryError(DeliveryError, PermanentError):
    """The sink will refuse the event every time: it becomes a dead letter at once."""
