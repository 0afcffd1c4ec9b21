"""The vebus exception tree: every error vebus raises on purpose, in one place.

VebusError
├── ConfigError                  a user's configuration is wrong; `errors` holds one line per
│   │                            problem, each naming its path (`routes[2].sink.url: ...`)
│   └── PatternError             an event pattern is invalid (also a ValueError)
├── RetryableError               the operation may succeed if tried again later
│   ├── PublishError             JetStream did not acknowledge a publish in time
│   │   └── StorageFullError     ... it refused it: no storage left (max_file_store, disk);
│   │                            retried until space is freed
│   ├── RateLimiterUnavailableError  a route's shared send schedule could not be reached
│   ├── VCenterConnectionError   vCenter cannot be reached or does not answer in time
│   └── RetryableDeliveryError   a sink may take the event later (5xx, 429, timeout, refused)
├── NoOutcomeError               a delivery attempt ended with no outcome: the process that
│                                made it died (a function's worker was killed); it counts as
│                                an attempt, like a crash, and past max_attempts is POISON
├── PermanentError               retrying cannot help: the same input fails the same way
│   ├── InvalidEventError        a message is not a valid CloudEvent (or not one vebus takes)
│   │   ├── UnsupportedModeError a CloudEvents mode or format vebus does not read (batch)
│   │   └── RequestRefusedError  an HTTP request to vebus is refused; `status` says how
│   ├── RouteFullError           a route's queue in VEBUS_ROUTES is at its limit
│   ├── MessageTooLargeError     headers and body exceed the server's max_payload
│   ├── TemplateError            a template does not compile or cannot be rendered
│   ├── PermanentDeliveryError   a sink refuses the event every time (4xx, bad answer)
│   ├── NatsAuthError            NATS refused the credentials
│   ├── NatsTlsError             the TLS handshake with NATS failed (an untrusted server
│   │                            certificate, no client certificate where one is required)
│   ├── VCenterCertificateError  vCenter's TLS certificate does not verify (system CAs or
│   │                            `ca_file`)
│   ├── VCenterLoginError        vCenter refused the username and password
│   └── StreamConflictError      a stream or consumer exists with a config vebus cannot use
├── ConflictError                a compare-and-set lost: someone changed it since it was read
│   └── StaleRevisionError       ... a stored revision (route set, replay job, alert state)
├── NotFoundError                what was asked for does not exist
│   └── DeadLetterNotFoundError  no dead letter has that id
└── EmbeddedProcessError         `vebus up` could not start a process of its own
    └── VcsimNotAvailableError   the vCenter simulator is missing and cannot be built here

DeliveryError is the base of the two delivery leaves: a delivery attempt failed, with the
dead-letter `code` (ErrorCode), the HTTP `status`, the `Retry-After` the sink asked for and
an optional `detail` (several lines: a function's traceback, the tail of its output).
Whether an error is worth another try follows from its class (`is_retryable`), never from
a flag set by whoever raised it. A service's own errors subclass these in its package
(vebus_collector.errors: LeaseLostError, CheckpointConflictError, StallError).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "ConflictError",
    "DeadLetterNotFoundError",
    "DeliveryError",
    "EmbeddedProcessError",
    "ErrorCode",
    "Exhausted",
    "InvalidEventError",
    "MessageTooLargeError",
    "NatsAuthError",
    "NatsTlsError",
    "NoOutcomeError",
    "NotFoundError",
    "PatternError",
    "PermanentDeliveryError",
    "PermanentError",
    "PublishError",
    "RateLimiterUnavailableError",
    "RequestRefusedError",
    "RetryableDeliveryError",
    "RetryableError",
    "RouteFullError",
    "StaleRevisionError",
    "StorageFullError",
    "StreamConflictError",
    "TemplateError",
    "UnsupportedModeError",
    "VCenterCertificateError",
    "VCenterConnectionError",
    "VCenterLoginError",
    "VcsimNotAvailableError",
    "VebusError",
    "is_retryable",
]


class ErrorCode(StrEnum):
    """Why an event became a dead letter (the `vebus-dlq-code` header)."""

    CONNECTION_FAILURE = "CONNECTION_FAILURE"
    TIMEOUT = "TIMEOUT"
    HTTP_4XX = "HTTP_4XX"
    HTTP_5XX = "HTTP_5XX"
    THROTTLED = "THROTTLED"
    INVALID_EVENT = "INVALID_EVENT"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    SINK_ERROR = "SINK_ERROR"
    POISON = "POISON"
    ROUTE_FULL = "ROUTE_FULL"
    TOO_LARGE = "TOO_LARGE"
    #: a function raised, exited with an unknown status or answered 5xx (retried)
    FUNCTION_ERROR = "FUNCTION_ERROR"
    #: a function asked to be called again later (RetryLater, exit 75; retried)
    FUNCTION_RETRY = "FUNCTION_RETRY"
    #: a function refused the event for good (Reject, exit 65, HTTP 4xx; not retried)
    FUNCTION_REJECTED = "FUNCTION_REJECTED"
    #: a function ran past its own `timeout` and its worker was killed (retried)
    FUNCTION_TIMEOUT = "FUNCTION_TIMEOUT"
    #: a function could not be started (its code does not load, its command is missing)
    FUNCTION_UNAVAILABLE = "FUNCTION_UNAVAILABLE"
    #: the event has passed through the function limit of a reply chain (not retried)
    HOP_LIMIT = "HOP_LIMIT"


class Exhausted(StrEnum):
    """Which condition ended the attempts (the `vebus-dlq-exhausted` header)."""

    MAX_ATTEMPTS = "max_attempts"
    MAX_AGE = "max_age"
    NOT_RETRYABLE = "not_retryable"
    MAX_DELIVERIES = "max_deliveries"


class VebusError(Exception):
    """Root of every error vebus raises on purpose."""


def is_retryable(error: BaseException) -> bool:
    """Whether the operation that raised `error` may succeed if tried again later."""
    return isinstance(error, RetryableError)


class ConfigError(VebusError):
    """A configuration problem; `errors` holds one line per problem, each naming its path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class PatternError(ConfigError, ValueError):
    """A pattern is invalid; `path` locates the problem inside it (`match.data.Vm[0]`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__([f"{path}: {message}"])
        self.path = path
        self.message = message


class RetryableError(VebusError):
    """The operation failed but may succeed if tried again later."""


class PublishError(RetryableError):
    """A JetStream publish was not acknowledged."""


class StorageFullError(PublishError):
    """JetStream refused a publish for want of storage (its `max_file_store` used up, the
    disk full): nothing was stored; the same publish succeeds once space is freed.
    `stream` names the stream the publish was for."""

    def __init__(self, message: str, *, stream: str) -> None:
        super().__init__(message)
        self.stream = stream


class RateLimiterUnavailableError(RetryableError):
    """A route's shared send schedule could not be read or written (NATS unavailable, or
    too many lost races in a row): the event is retried later."""


class VCenterConnectionError(RetryableError):
    """vCenter cannot be reached, or did not answer as a vSphere SDK endpoint."""


class PermanentError(VebusError):
    """The operation failed and will fail the same way every time."""


class InvalidEventError(PermanentError):
    """A NATS message is not a valid vebus CloudEvent."""


class UnsupportedModeError(InvalidEventError):
    """A CloudEvents content mode or format vebus does not read: batch mode, or a
    structured format other than JSON."""


class RequestRefusedError(InvalidEventError):
    """An HTTP request to a vebus endpoint (the webhook source) is refused; `status` is
    the HTTP status to answer with (400 malformed, 401 unauthorised, 413 too large...)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RouteFullError(PermanentError):
    """JetStream refused a message because its route holds `route_max_msgs` already."""


class MessageTooLargeError(PermanentError):
    """A message's headers and body together exceed the server's max_payload.

    nats-py checks only the body; a message whose headers push it over is sent anyway and
    the server closes the connection, so publishers check first and raise this instead.
    """


class TemplateError(PermanentError):
    """A template does not compile or cannot be rendered; the message names its path."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DeliveryError(VebusError):
    """A delivery attempt failed; `code` says how, `status` is the HTTP status if any.

    Raised only as one of its two leaves, RetryableDeliveryError or PermanentDeliveryError.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        status: int | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        #: seconds the sink asked us to wait before the next attempt (`Retry-After`)
        self.retry_after = retry_after
        #: several lines that explain it (a traceback, the tail of a function's output)
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return is_retryable(self)


class RetryableDeliveryError(DeliveryError, RetryableError):
    """The sink may accept the event if it is offered again later."""


class PermanentDeliveryError(DeliveryError, PermanentError):
    """The sink will refuse the event every time: it becomes a dead letter at once."""


class NoOutcomeError(VebusError):
    """A delivery attempt ended with no outcome: what made it died before it could say
    (a function's worker killed by a signal, its memory cap or the OOM killer).

    Not a verdict on the event: the attempt counts like a crash of the service (JetStream's
    delivery count), the event comes again after the route's backoff, and an event that
    only ever ends this way becomes a POISON dead letter after max_attempts. `detail` is
    what the dead process left (the tail of its output).
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class NatsAuthError(PermanentError):
    """NATS refused the credentials: retrying cannot help."""


class VCenterCertificateError(PermanentError):
    """vCenter's TLS certificate is not trusted (set `ca_file`, or `insecure` for a lab)."""


class VCenterLoginError(PermanentError):
    """vCenter refused the login (wrong username or password)."""


class NatsTlsError(PermanentError):
    """The TLS handshake with NATS failed; the message says which side and what to set."""


class StreamConflictError(PermanentError):
    """A stream or consumer exists with a config vebus cannot move to without losing data."""


class ConflictError(VebusError):
    """A compare-and-set lost: what was read has changed since."""


class StaleRevisionError(ConflictError):
    """A stored entry is not at the revision the writer read: someone else wrote first."""


class NotFoundError(VebusError):
    """What was asked for does not exist."""


class DeadLetterNotFoundError(NotFoundError):
    """No dead letter has that id."""


class EmbeddedProcessError(VebusError):
    """A process `vebus up` runs (nats-server, the vCenter simulator) could not start."""


class VcsimNotAvailableError(EmbeddedProcessError):
    """The simulator binary is missing and cannot be built here."""
