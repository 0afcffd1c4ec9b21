"""Delivering one routed message to its sink, and deciding what becomes of it.

The decision, per message (attempt = JetStream's delivery count):

| situation                                   | what happens                                |
|---------------------------------------------|---------------------------------------------|
| not a valid CloudEvent                      | dead letter INVALID_EVENT, ack              |
| attempt > max_attempts (earlier attempts     | dead letter POISON (max_deliveries), ack,   |
| ended without an outcome: crash or hang)    | without calling the sink                    |
| sink succeeded                              | ack                                         |
| retryable failure, attempt < max_attempts   | nak(backoff, or Retry-After if longer)      |
| retryable failure, attempt >= max_attempts  | dead letter (max_attempts), ack             |
| permanent failure                           | dead letter (not_retryable), ack            |
| the dead letter was not stored              | nak(backoff): never ack what is not stored  |

A sink that raises anything but a DeliveryError is a bug: the consumer loop logs it and
naks, and the attempt counts like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from vebus.cloudevent import from_headers
from vebus.config import Route
from vebus.consumer import Ack, Disposition, Nak
from vebus.dlq import ErrorCode, Exhausted, publish_dead_letter
from vebus.errors import InvalidEventError, VebusError
from vebus_dispatcher.backoff import backoff_delay
from vebus_dispatcher.errors import DeliveryError, RetryableDeliveryError
from vebus_dispatcher.sinks import Sink

__all__ = ["RouteDelivery"]

log = logging.getLogger(__name__)


class RouteDelivery:
    """The PullWorker handler of one route: `handle` returns Ack or Nak for each message."""

    def __init__(
        self,
        js: JetStreamContext,
        route: Route,
        sink: Sink,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._js = js
        self._route = route
        self._sink = sink
        self._rng = rng

    async def handle(self, msg: Msg) -> Disposition:
        """Deliver `msg` once and say what JetStream should do with it."""
        route, policy = self._route.name, self._route.delivery
        attempt = msg.metadata.num_delivered
        headers = msg.headers or {}
        try:
            event = from_headers(headers, msg.data)
        except InvalidEventError as e:
            log.warning("route %s: invalid event (attempt %d): %s", route, attempt, e)
            return await self._dead_letter(
                msg, attempt, ErrorCode.INVALID_EVENT, str(e), 0, Exhausted.NOT_RETRYABLE
            )
        if attempt > policy.max_attempts:
            error = (
                f"delivered {attempt} times, more than max_attempts ({policy.max_attempts}): "
                "earlier attempts ended without an outcome (the dispatcher crashed or hung)"
            )
            log.warning(
                "route %s: event %s attempt %d: poison: %s", route, event.id, attempt, error
            )
            return await self._dead_letter(
                msg, attempt, ErrorCode.POISON, error, attempt - 1, Exhausted.MAX_DELIVERIES
            )
        try:
            async with asyncio.timeout(float(policy.timeout)):
                await self._sink.deliver(event, headers)
        except TimeoutError:
            err: DeliveryError = RetryableDeliveryError(
                f"{self._sink.kind} sink gave no answer within {float(policy.timeout):g}s",
                code=ErrorCode.TIMEOUT,
            )
        except DeliveryError as e:
            err = e
        else:
            return Ack()

        if err.retryable and attempt < policy.max_attempts:
            delay = backoff_delay(
                policy.backoff, attempt, retry_after=err.retry_after, rng=self._rng
            )
            log.warning(
                "route %s: event %s attempt %d/%d failed [%s]: %s; next attempt in %.2fs",
                route, event.id, attempt, policy.max_attempts, err.code, err, delay,
            )  # fmt: skip
            return Nak(delay)
        exhausted = Exhausted.MAX_ATTEMPTS if err.retryable else Exhausted.NOT_RETRYABLE
        log.warning(
            "route %s: event %s attempt %d/%d failed [%s]: %s; dead-lettered (%s)",
            route, event.id, attempt, policy.max_attempts, err.code, err, exhausted,
        )  # fmt: skip
        return await self._dead_letter(
            msg, attempt, err.code, str(err), attempt, exhausted, status=err.status
        )

    async def _dead_letter(
        self,
        msg: Msg,
        attempt: int,
        code: ErrorCode,
        error: str,
        attempts: int,
        exhausted: Exhausted,
        *,
        status: int | None = None,
    ) -> Disposition:
        """Store the dead letter, then Ack; Nak if JetStream did not acknowledge it."""
        with contextlib.suppress(nats.errors.Error):
            await msg.in_progress()  # the publish gets a whole ack_wait of its own
        try:
            await publish_dead_letter(
                self._js,
                route=self._route.name,
                sink=self._sink.kind,
                code=code,
                error=error,
                headers=msg.headers,
                body=msg.data,
                attempts=attempts,
                exhausted=exhausted,
                status=status,
                first_attempt=msg.metadata.timestamp,
                last_attempt=dt.datetime.now(dt.UTC),
            )
        except VebusError as e:
            delay = backoff_delay(self._route.delivery.backoff, attempt, rng=self._rng)
            log.error(
                "route %s: dead letter (%s) not stored, the message stays on the route and "
                "comes back in %.2fs: %s",
                self._route.name, code, delay, e,
            )  # fmt: skip
            return Nak(delay)
        return Ack()
