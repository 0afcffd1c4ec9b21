"""The vebus exception tree, shared by every service.

VebusError
├── ConfigError            a user's configuration is wrong; the message names the path
├── RetryableError         the operation may succeed later (timeout, 5xx, connection refused)
│   └── PublishError       JetStream did not acknowledge a publish in time
└── PermanentError         retrying cannot help (4xx, invalid event, template error)
    ├── InvalidEventError  a message on a vebus subject is not a valid CloudEvent
    ├── RouteFullError     a route's queue in VEBUS_ROUTES is at its limit
    └── MessageTooLargeError  headers and body exceed the server's max_payload
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidEventError",
    "MessageTooLargeError",
    "PermanentError",
    "PublishError",
    "RetryableError",
    "RouteFullError",
    "VebusError",
]


class VebusError(Exception):
    """Root of every error vebus raises on purpose."""


class ConfigError(VebusError):
    """A configuration problem; `errors` holds one line per problem, each naming its path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class RetryableError(VebusError):
    """The operation failed but may succeed if tried again later."""


class PublishError(RetryableError):
    """A JetStream publish was not acknowledged."""


class PermanentError(VebusError):
    """The operation failed and will fail the same way every time."""


class InvalidEventError(PermanentError):
    """A NATS message is not a valid vebus CloudEvent."""


class RouteFullError(PermanentError):
    """JetStream refused a message because its route holds `route_max_msgs` already."""


class MessageTooLargeError(PermanentError):
    """A message's headers and body together exceed the server's max_payload.

    nats-py checks only the body; a message whose headers push it over is sent anyway and
    the server closes the connection, so publishers check first and raise this instead.
    """
