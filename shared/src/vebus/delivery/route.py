"""Delivering one routed message to its sink, and deciding what becomes of it.

The decision, per message (attempt = JetStream's delivery count; age = time since the
message entered the route, its JetStream timestamp, less the time the route was paused):

| situation                                   | what happens                                |
|---------------------------------------------|---------------------------------------------|
| not a valid CloudEvent                      | dead letter INVALID_EVENT, ack              |
| attempt > max_attempts (earlier attempts    | dead letter POISON (max_deliveries), ack,   |
| ended without an outcome: crash or hang)    | without calling the sink                    |
| age > max_age                               | dead letter (max_age), ack, no attempt      |
| the route has a rate                        | wait for the route's next slot (shared by   |
|                                             | all replicas), then go on                   |
| sink succeeded                              | ack                                         |
| retryable failure, attempt < max_attempts,  | nak(backoff, or Retry-After if longer)      |
| and the next attempt comes within max_age   |                                             |
| retryable failure, attempt >= max_attempts  | dead letter (max_attempts), ack             |
| retryable failure, next attempt too late    | dead letter (max_age), ack                  |
| permanent failure                           | dead letter (not_retryable), ack            |
| no outcome (a function's worker died:       | nak(backoff): the attempt counts like a     |
| NoOutcomeError)                             | crash, so past max_attempts it is POISON    |
| the dead letter was not stored              | nak(backoff): never ack what is not stored  |

A dead letter's code is the last failure's (for an event that expired while it waited,
the last failure this replica saw, else SINK_ERROR), with the failure's `detail` when it
has one (a function's traceback); a POISON letter carries what the last attempt without
an outcome left, when this replica saw it. A sink that raises anything but a DeliveryError
or NoOutcomeError is a bug: the consumer loop logs it and naks, and the attempt counts like
a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from vebus.bus.cloudevent import CloudEvent, from_headers
from vebus.bus.consume import Ack, Disposition, Nak
from vebus.bus.dlq import publish_dead_letter
from vebus.config import Route
from vebus.delivery.backoff import backoff_delay
from vebus.delivery.ratelimit import RateLimiter
from vebus.delivery.sink import Sink
from vebus.errors import (
    DeliveryError,
    ErrorCode,
    Exhausted,
    InvalidEventError,
    NoOutcomeError,
    RateLimiterUnavailableError,
    RetryableDeliveryError,
    VebusError,
)

__all__ = ["PausedSeconds", "RouteDelivery", "no_pause"]

log = logging.getLogger(__name__)

#: seconds the route `route` was paused since `since` (the time a message entered it)
PausedSeconds = Callable[[str, dt.datetime], float]
#: the last failure of this many messages is remembered, for dead letters of expired ones
REMEMBERED_FAILURES = 4096
#: how often a message waiting for its rate slot is reported in progress to JetStream
HEARTBEAT = 5.0


@dataclass(frozen=True, slots=True)
class _LastFailure:
    """What a dead letter needs of a message's last failed attempt, and nothing more.

    Not the exception itself: its traceback holds the frames of the attempt (the message,
    its event, the sink's response), several KB each. Entries of messages that another
    replica then delivered stay until REMEMBERED_FAILURES pushes them out, so a kept
    exception made a dispatcher grow by about 6 MB an hour at a 5% sink failure rate
    (tests/chaos/test_soak.py).
    """

    message: str
    code: ErrorCode = ErrorCode.SINK_ERROR
    status: int | None = None
    detail: str | None = None

    def __str__(self) -> str:
        return self.message


def no_pause(route: str, since: dt.datetime) -> float:
    """The PausedSeconds of a dispatcher that does not know about pauses: none."""
    return 0.0


class RouteDelivery:
    """The PullWorker handler of one route: `handle` returns Ack or Nak for each message."""

    def __init__(
        self,
        js: JetStreamContext,
        route: Route,
        sink: Sink,
        *,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
        paused_seconds: PausedSeconds = no_pause,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._route = route
        self._sink = sink
        self._rng = rng
        self._limiter = limiter
        self._paused = paused_seconds
        self._clock = clock
        #: the last failed attempt of a message (stream sequence), for MAX_AGE letters
        self._failures: OrderedDict[int, _LastFailure] = OrderedDict()
        #: the last attempt without an outcome of a message (stream sequence), for POISON
        self._no_outcome: OrderedDict[int, _LastFailure] = OrderedDict()

    def age(self, entered: dt.datetime) -> float:
        """Seconds since a message entered the route, less the time the route was paused."""
        return self._clock() - entered.timestamp() - self._paused(self._route.name, entered)

    def _expired(self, entered: dt.datetime, *, after: float = 0.0) -> bool:
        max_age = self._route.delivery.max_age
        return max_age is not None and self.age(entered) + after > max_age

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
                "earlier attempts ended without an outcome (the service crashed or hung, or "
                "the function's worker died)"
            )
            crash = self._no_outcome.pop(msg.metadata.sequence.stream, None)
            if crash is not None:
                error += f"; the last attempt: {crash}"
            log.warning(
                "route %s: event %s attempt %d: poison: %s", route, event.id, attempt, error
            )
            return await self._dead_letter(
                msg, attempt, ErrorCode.POISON, error, attempt - 1, Exhausted.MAX_DELIVERIES,
                detail=crash.detail if crash is not None else None,
            )  # fmt: skip
        entered = msg.metadata.timestamp
        if self._expired(entered):
            return await self._expire(msg, event, attempt, entered)
        if self._limiter is not None:
            try:
                slot = await self._limiter.reserve()
            except RateLimiterUnavailableError as e:
                return await self._failed(
                    msg, event, attempt, entered,
                    RetryableDeliveryError(str(e), code=ErrorCode.CONNECTION_FAILURE),
                )  # fmt: skip
            await self._limiter.wait(slot, heartbeat=lambda: _in_progress(msg), every=HEARTBEAT)
            if self._expired(entered):
                return await self._expire(msg, event, attempt, entered)
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
        except NoOutcomeError as e:
            return self._no_outcome_seen(msg, event, attempt, e)
        else:
            self._failures.pop(msg.metadata.sequence.stream, None)
            self._no_outcome.pop(msg.metadata.sequence.stream, None)
            return Ack()
        return await self._failed(msg, event, attempt, entered, err)

    def _no_outcome_seen(
        self, msg: Msg, event: CloudEvent, attempt: int, e: NoOutcomeError
    ) -> Disposition:
        """An attempt that ended with no outcome: offered again after the backoff; it counts
        like a crash, so an event that never gets an outcome becomes POISON."""
        seq = msg.metadata.sequence.stream
        self._no_outcome[seq] = _LastFailure(str(e), detail=e.detail)
        self._no_outcome.move_to_end(seq)
        while len(self._no_outcome) > REMEMBERED_FAILURES:
            self._no_outcome.popitem(last=False)
        delay = backoff_delay(self._route.delivery.backoff, attempt, rng=self._rng)
        log.warning(
            "route %s: event %s attempt %d/%d ended without an outcome: %s; next attempt "
            "in %.2fs", self._route.name, event.id, attempt, self._route.delivery.max_attempts,
            e, delay,
        )  # fmt: skip
        return Nak(delay)

    async def _failed(
        self, msg: Msg, event: CloudEvent, attempt: int, entered: dt.datetime, err: DeliveryError
    ) -> Disposition:
        route, policy = self._route.name, self._route.delivery
        seq = msg.metadata.sequence.stream
        if err.retryable and attempt < policy.max_attempts:
            delay = backoff_delay(
                policy.backoff, attempt, retry_after=err.retry_after, rng=self._rng
            )
            if not self._expired(entered, after=delay):
                log.warning(
                    "route %s: event %s attempt %d/%d failed [%s]: %s; next attempt in %.2fs",
                    route, event.id, attempt, policy.max_attempts, err.code, err, delay,
                )  # fmt: skip
                self._failures[seq] = _LastFailure(str(err), err.code, err.status, err.detail)
                self._failures.move_to_end(seq)
                while len(self._failures) > REMEMBERED_FAILURES:
                    self._failures.popitem(last=False)
                return Nak(delay)
            exhausted = Exhausted.MAX_AGE
            error = (
                f"{err}; the next attempt (in {delay:.1f}s) would come after max_age "
                f"({float(policy.max_age or 0):g}s)"
            )
        else:
            exhausted = Exhausted.MAX_ATTEMPTS if err.retryable else Exhausted.NOT_RETRYABLE
            error = str(err)
        self._failures.pop(seq, None)
        log.warning(
            "route %s: event %s attempt %d/%d failed [%s]: %s; dead-lettered (%s)",
            route, event.id, attempt, policy.max_attempts, err.code, err, exhausted,
        )  # fmt: skip
        return await self._dead_letter(
            msg, attempt, err.code, error, attempt, exhausted, status=err.status, detail=err.detail
        )

    async def _expire(
        self, msg: Msg, event: CloudEvent, attempt: int, entered: dt.datetime
    ) -> Disposition:
        """Dead-letter an event older than max_age without attempting it."""
        age = self.age(entered)
        error = (
            f"not delivered within max_age ({float(self._route.delivery.max_age or 0):g}s): "
            f"it entered the route {age:.1f}s ago"
        )
        last = self._failures.pop(msg.metadata.sequence.stream, None)
        code, status = ErrorCode.SINK_ERROR, None
        detail = None
        if last is not None:
            code, status, detail = last.code, last.status, last.detail
            error += f"; the last attempt failed: {last}"
        log.warning(
            "route %s: event %s expired after %d attempt(s): %s; dead-lettered (max_age)",
            self._route.name, event.id, attempt - 1, error,
        )  # fmt: skip
        return await self._dead_letter(
            msg, attempt, code, error, attempt - 1, Exhausted.MAX_AGE, status=status, detail=detail
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
        detail: str | None = None,
    ) -> Disposition:
        """Store the dead letter, then Ack; Nak if JetStream did not acknowledge it."""
        await _in_progress(msg)  # the publish gets a whole ack_wait of its own
        try:
            await publish_dead_letter(
                self._js,
                route=self._route.name,
                sink=self._sink.kind,
                code=code,
                # a NATS header: readers that parse headers as e-mail (nats-py's direct get)
                # turn non-ASCII values into Header objects, so keep it ASCII
                error=error.encode("ascii", "backslashreplace").decode("ascii"),
                headers=msg.headers,
                body=msg.data,
                attempts=attempts,
                exhausted=exhausted,
                status=status,
                first_attempt=msg.metadata.timestamp,
                last_attempt=dt.datetime.now(dt.UTC),
                detail=detail,
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


async def _in_progress(msg: Msg) -> None:
    with contextlib.suppress(nats.errors.Error):
        await msg.in_progress()
