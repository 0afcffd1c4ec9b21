"""A route's function as a Sink: the delivery machinery (vebus.delivery) calls it like any
sink, and the outcome of the invocation becomes the delivery's.

| the invocation               | the delivery                                | code              |
|------------------------------|---------------------------------------------|-------------------|
| the event has passed through | dead letter at once, the function not run   | HOP_LIMIT         |
| `max_hops` functions         |                                             |                   |
| done                         | replies published (publish ack), then done  | -                 |
| a reply is not an event      | dead letter at once                         | FUNCTION_ERROR    |
| retry                        | retried (after `after`, else the backoff)   | FUNCTION_RETRY    |
| reject                       | dead letter at once                         | FUNCTION_REJECTED |
| error                        | retried by policy, then a dead letter with  | FUNCTION_ERROR    |
|                              | the traceback or the output's tail          |                   |
| timeout                      | retried by policy                           | FUNCTION_TIMEOUT  |
| unavailable                  | retried by policy                           | FUNCTION_UNAVAIL- |
|                              |                                             | ABLE              |
| crashed                      | no outcome (NoOutcomeError): offered again, | POISON in the end |
|                              | POISON when it never gets one               |                   |

A reply is stored before the delivery is acknowledged: a crash in between runs the function
again, and its reply, with the same Msg-Id, is dropped by JetStream (within its duplicate
window). Replies travel at-least-once like everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nats.js import JetStreamContext

from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import publish
from vebus.config import Config, Route
from vebus.errors import (
    ErrorCode,
    InvalidEventError,
    MessageTooLargeError,
    NoOutcomeError,
    PermanentDeliveryError,
    PublishError,
    RetryableDeliveryError,
    RouteFullError,
)
from vebus_functions.host import Function
from vebus_functions.replies import build_reply, hops_of
from vebus_functions.runtime import Call, Outcome

__all__ = ["FunctionSink", "vcenter_of"]

log = logging.getLogger(__name__)


def vcenter_of(event: CloudEvent, headers: Mapping[str, str], config: Config) -> str | None:
    """The `vcenters[]` name of the vCenter an event came from: the collector's
    `vebus-vcenter` header, else the vCenter whose URL is the event's source (a scheduled
    check's events have it too)."""
    known = {vc.name for vc in config.vcenters}
    name = headers.get(names.H_VCENTER)
    if name in known:
        return name
    source = event.source.rstrip("/")
    for vc in config.vcenters:
        if vc.url.rstrip("/") == source:
            return vc.name
    return None


class FunctionSink:
    """Delivers a route's events to one function (see the module docstring)."""

    kind = names.FUNCTION_SINK

    def __init__(
        self, route: Route, function: Function, js: JetStreamContext | None, config: Config
    ) -> None:
        self.route = route
        self.function = function
        self._js = js
        self._config = config

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        fn = self.function
        hops = hops_of(event)
        if hops >= fn.config.max_hops:
            fn.stats.record("hop_limit", None)
            raise PermanentDeliveryError(
                f"event {event.id} has passed through {hops} function(s) "
                f"({names.HOPS_EXTENSION}={hops}), the limit of function {fn.name} "
                f"(max_hops {fn.config.max_hops}): a reply chain that loops? not run",
                code=ErrorCode.HOP_LIMIT,
            )
        if fn.runtime is None:
            fn.stats.record("unavailable", None, fn.problem)
            raise RetryableDeliveryError(
                f"function {fn.name} cannot run here: {fn.problem}",
                code=ErrorCode.FUNCTION_UNAVAILABLE,
            )
        call = Call(
            route=self.route.name,
            vcenter=vcenter_of(event, headers, self._config),
            traceparent=headers.get(names.TRACEPARENT),
        )
        outcome = await fn.runtime.invoke(event, call)
        fn.stats.record(outcome.status, outcome.duration or None,
                        None if outcome.status == "done" else outcome.message)  # fmt: skip
        if outcome.status == "done":
            await self._publish_replies(event, headers, outcome)
            return
        raise _failure(fn.name, outcome)

    async def _publish_replies(
        self, event: CloudEvent, headers: Mapping[str, str], outcome: Outcome
    ) -> None:
        if not outcome.replies:
            return
        fn = self.function
        cause = headers.get(names.MSG_ID) or f"{self.route.name}:{event.source}:{event.id}"
        subject = names.event_subject(names.FUNCTIONS_SOURCE, fn.name)
        for index, raw in enumerate(outcome.replies):
            msg_id = names.function_reply_msg_id(fn.name, cause, index)
            try:
                reply = build_reply(raw, function=fn.name, msg_id=msg_id, hops=hops_of(event) + 1)
            except InvalidEventError as e:
                fn.stats.record("bad_reply", None, str(e))
                raise PermanentDeliveryError(str(e), code=ErrorCode.FUNCTION_ERROR) from None
            out = to_headers(reply, {names.MSG_ID: msg_id})
            if traceparent := headers.get(names.TRACEPARENT):
                out[names.TRACEPARENT] = traceparent
            if self._js is None:
                continue  # a local test run: the caller shows the replies
            try:
                await publish(self._js, subject, reply.data, out)
            except MessageTooLargeError as e:
                raise PermanentDeliveryError(
                    f"reply {index} of function {fn.name} is too large: {e}",
                    code=ErrorCode.FUNCTION_ERROR,
                ) from None
            except (PublishError, RouteFullError) as e:
                raise RetryableDeliveryError(
                    f"reply {index} of function {fn.name} not stored: {e}",
                    code=ErrorCode.CONNECTION_FAILURE,
                ) from None
            log.debug("function %s: reply %s published (%s)", fn.name, reply.id, msg_id)

    async def close(self) -> None:
        pass  # the function's processes belong to the host, shared by its routes


def _failure(function: str, outcome: Outcome) -> Exception:
    """The error that says how an invocation failed (see the table above)."""
    message = f"function {function}: {outcome.message}"
    detail = outcome.detail
    match outcome.status:
        case "retry":
            return RetryableDeliveryError(
                message, code=ErrorCode.FUNCTION_RETRY, retry_after=outcome.retry_after,
                detail=detail,
            )  # fmt: skip
        case "reject":
            return PermanentDeliveryError(message, code=ErrorCode.FUNCTION_REJECTED, detail=detail)
        case "timeout":
            return RetryableDeliveryError(message, code=ErrorCode.FUNCTION_TIMEOUT, detail=detail)
        case "unavailable":
            return RetryableDeliveryError(
                message, code=ErrorCode.FUNCTION_UNAVAILABLE, detail=detail
            )
        case "crashed":
            return NoOutcomeError(message, detail=detail)
        case _:
            return RetryableDeliveryError(message, code=ErrorCode.FUNCTION_ERROR, detail=detail)
