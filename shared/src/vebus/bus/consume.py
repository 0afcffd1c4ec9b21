"""A pull-consumer loop with bounded concurrency and explicit ack, nak or term per message.

The handler looks at one message and returns what to do with it (`Ack`, `Nak(delay)`,
`Term`); the loop does it. A handler that raises is logged and its message nak'ed after a
short delay: JetStream's delivery count then counts the failure as an attempt.

With `prefetch`, up to that many messages more than `max_in_flight` are fetched ahead and
wait in the worker, so that a handler that finishes is replaced at once instead of after a
fetch round trip (a latency-bound handler, e.g. an HTTP call, keeps all its slots busy),
and fetches ask for half the prefetch or more at a time instead of one by one.
On stop, messages already fetched are handled too; a message that waited a second or
more is reported in progress before its handler starts, so its ack_wait starts afresh.

Messages come through one outstanding pull request at a time (batch = the room left,
long-polling up to `fetch_timeout`) into a subscription callback: they start as they
arrive, with no per-message timer and no round trip between batches while a backlog lasts
(loadtest/RESULTS.md has the before and after). An idle consumer's requests last longer
and longer (each that ends with no message doubles the next one's expiry, up to
IDLE_FETCH_MAX; a message brings it back to `fetch_timeout`): a thousand idle routes make
a few requests a second instead of hundreds. A request lost to a reconnect is noticed by
the connection's reconnect count, looked at every RECONNECT_POLL seconds while a request
waits, not only when it expires.

A consumer that disappears (deleted by hand, or by another replica that retired its route
while this one runs it again) ends the outstanding pull request with "409 Consumer
Deleted", and every request after that with "503" (no responders: nothing listens on the
consumer's MSG.NEXT subject). With `on_consumer_gone`, the worker calls it (one call at a
time) so its owner can create the consumer again, and goes on asking, ERROR_PAUSE apart,
while the call runs: in a cluster a consumer whose leader was lost answers 503 as well
until it elects another, and creating it then waits for that election (up to the API
timeout), so the first answer of the new leader is taken at once instead of after the
call. Without `on_consumer_gone` the worker pauses and retries, as for any other error
status.

Each message is observed here, not in handlers: inside a service, the worker reports it to
the service's observer (vebus.bus.observe; the runtime's telemetry keeps counters, wait and
age histograms, a CONSUMER span that continues the message's trace and is current while
the handler runs, and the log scope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, StatusCode

from vebus.bus import natsapi, observe

__all__ = ["Ack", "ConsumerGone", "Disposition", "Handler", "Nak", "PullWorker", "Term"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ack:
    """The message's work is done and its output is safe."""


@dataclass(frozen=True, slots=True)
class Nak:
    """Deliver the message again after `delay` seconds."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Term:
    """Never deliver this message again (its outcome was recorded elsewhere)."""

    reason: str = ""


Disposition = Ack | Nak | Term
Handler = Callable[[Msg], Awaitable[Disposition]]
#: called when the worker's consumer does not exist any more: creates it again
ConsumerGone = Callable[[], Awaitable[None]]

#: delay before a message whose handler raised is offered again
CRASH_DELAY = 1.0
#: a prefetched message that waited this long is reported in progress before it is handled
PREFETCH_REFRESH = 1.0
#: a pull request whose end (its last message or a status) has not come this long after it
#: expired is taken as lost (the server drops requests on a reconnect)
EXPIRY_MARGIN = 1.0
#: pause before the next pull request after an error status (consumer deleted, ...)
ERROR_PAUSE = 0.5
#: on stop, how long messages of the outstanding pull request are still taken
STOP_GRACE = 1.0
#: the longest an idle consumer's pull request waits (its expiry doubles up to this)
IDLE_FETCH_MAX = 30.0
#: while a request waits, how often the connection's reconnect count is looked at (a
#: reconnect drops what the server held for the old connection)
RECONNECT_POLL = 1.0


class PullWorker:
    """Fetches batches from a durable pull consumer and runs at most `max_in_flight` at once."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        max_in_flight: int,
        batch: int = 64,
        fetch_timeout: float = 5.0,
        prefetch: int = 0,
        on_consumer_gone: ConsumerGone | None = None,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        #: the next request's expiry: `fetch_timeout`, longer while requests come back empty
        self._expiry = fetch_timeout
        #: messages the outstanding request brought so far
        self._got = 0
        #: the connection's reconnect count when the outstanding request was sent
        self._reconnects = 0
        self._limit = max_in_flight + max(0, prefetch)
        #: fetch again once this many fit: with prefetch, in batches rather than one by one
        self._refill = max(1, prefetch // 2)
        self._in_flight = 0
        self._ready: deque[tuple[Msg, float]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        #: set when the pull loop has something to do: ask for more, stop, or handle a status
        self._wake = asyncio.Event()
        #: messages the outstanding pull request may still bring (0: no request outstanding)
        self._pending = 0
        #: when the outstanding request expires (monotonic); past it, it is taken as over
        self._expires_at = 0.0
        #: no new request before this (monotonic): after an error status
        self._pause_until = 0.0
        self._on_consumer_gone = on_consumer_gone
        #: a status said the consumer is gone: call `on_consumer_gone` (unless running)
        self._gone: str | None = None
        #: the `on_consumer_gone` call in progress: pulling goes on beside it
        self._recreating: asyncio.Task[None] | None = None
        #: answers from the consumer itself (messages, statuses other than gone)
        self._answers = 0
        self.handled = 0
        self._observer: observe.ConsumerObserver | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull and handle until `stopping` is set, then wait for what is in flight.

        The pull protocol is spoken directly (a subscription with a callback on an inbox,
        pull requests published to the consumer's MSG.NEXT subject) rather than with
        nats-py's `fetch`: fetch waits for each message with a timer task of its own and
        returns only when its batch is complete, so a worker handling messages as they
        arrive spent more on fetching than on the messages. At most one request is
        outstanding, for no more than the room left (`max_in_flight` + `prefetch` less
        what is held), so the bound stays exact."""
        nc = natsapi.connection(self._js)
        api = f"{natsapi.api_prefix(self._js)}.CONSUMER.MSG.NEXT.{self._stream}.{self._durable}"
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=self._on_message)
        if (observer := observe.current()) is not None:
            self._observer = observer.consumer(self._stream, self._durable)
        stop_waiter = asyncio.create_task(self._wake_on(stopping))
        try:
            while not stopping.is_set():
                if self._gone is not None and self._recreating is None:
                    self._recreating = asyncio.create_task(self._recreate(self._gone))
                now = time.monotonic()
                if self._pending and (
                    now >= self._expires_at + EXPIRY_MARGIN
                    or nc.stats["reconnects"] != self._reconnects
                ):
                    self._pending = 0  # its end never came (a reconnect drops requests)
                    self._expiry = self._fetch_timeout
                room = self._limit - self._in_flight - len(self._ready)
                if not self._pending and now >= self._pause_until and self._may_pull(room):
                    want = min(self._batch, room)
                    request = {"batch": want, "expires": int(self._expiry * 1e9)}
                    try:
                        await nc.publish(api, json.dumps(request).encode(), reply=inbox)
                    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                        break
                    except nats.errors.Error as e:
                        log.warning("%s: pull request failed (%r), retrying", self._durable, e)
                        self._pause_until = now + ERROR_PAUSE
                    else:
                        self._pending = want
                        self._got = 0
                        self._reconnects = nc.stats["reconnects"]
                        self._expires_at = now + self._expiry
                self._wake.clear()
                wait = self._next_deadline() - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await self._wake.wait()
        finally:
            try:
                stop_waiter.cancel()
                if self._recreating is not None:
                    self._recreating.cancel()
                # what the outstanding request still brings is handled too, for a moment (a
                # message the server sends after that is offered again after ack_wait)
                until = min(self._expires_at, time.monotonic() + STOP_GRACE)
                while self._pending and time.monotonic() < until and not nc.is_closed:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(until - time.monotonic()):
                            await self._wake.wait()
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
                if self._tasks or self._ready:
                    log.info(
                        "%s: finishing %d in-flight message(s)",
                        self._durable, len(self._tasks) + len(self._ready),
                    )  # fmt: skip
                while self._tasks or self._ready:
                    self._start_ready()
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if self._observer is not None:
                    self._observer.close()  # no longer followed here: not polled

    def _may_pull(self, room: int) -> bool:
        """Ask for more when a batch's worth fits (with prefetch: half of it), or when
        nothing at all is held."""
        return room >= self._refill or (room > 0 and room == self._limit)

    def _next_deadline(self) -> float:
        """When the pull loop must look again even if nothing wakes it."""
        if self._pending:
            return min(self._expires_at + EXPIRY_MARGIN, time.monotonic() + RECONNECT_POLL)
        if self._pause_until > time.monotonic():
            return self._pause_until
        return time.monotonic() + self._fetch_timeout

    async def _recreate(self, status: str) -> None:
        """Let the owner create the vanished consumer again, while the pull loop goes on
        asking (ERROR_PAUSE apart): in a cluster a consumer electing a leader answers 503
        too, and its creation waits for the election (up to the API timeout), so pulling
        must not wait for it. The next request tells whether it worked; a failure comes
        back here."""
        self._gone = None
        answers = self._answers
        assert self._on_consumer_gone is not None
        log.warning("%s: consumer not found (pull request ended: %s)", self._durable, status)
        try:
            await self._on_consumer_gone()
        except Exception as e:
            if self._answers == answers:  # still not answering
                log.warning("%s: could not create the consumer again: %r", self._durable, e)
            else:  # it answered meanwhile (a leader was elected): nothing was missing
                log.info("%s: the consumer answers again", self._durable)
        finally:
            self._recreating = None
            self._wake.set()

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._wake.set()

    async def _on_message(self, msg: Msg) -> None:
        """A message of the outstanding pull request, or the status that ends it."""
        status = msg.headers.get(Header.STATUS) if msg.headers and not msg.data else None
        if status is not None:
            if status == StatusCode.CONTROL_MESSAGE:  # idle heartbeat
                return
            self._pending = 0
            if status in (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT):
                self._answered()
                if not self._got:
                    self._expiry = min(self._expiry * 2, max(IDLE_FETCH_MAX, self._fetch_timeout))
            else:
                description = msg.headers.get(Header.DESCRIPTION, "") if msg.headers else ""
                description = description.split("\n", 1)[0].strip()  # 503: headers follow
                if self._on_consumer_gone is not None and _consumer_gone(status, description):
                    self._gone = f"{status} {description or 'No Responders'}"
                else:
                    self._answered()
                    log.warning("%s: pull request ended: %s %s", self._durable, status, description)
                self._pause_until = time.monotonic() + ERROR_PAUSE
            self._wake.set()
            return
        self._answered()
        if self._pending > 0:
            self._pending -= 1
        self._got += 1
        self._expiry = self._fetch_timeout
        self._ready.append((msg, time.monotonic()))
        self._start_ready()
        if not self._pending:
            self._wake.set()

    def _answered(self) -> None:
        """The consumer answered a request: a gone status seen before is out of date."""
        self._answers += 1
        self._gone = None

    def _start_ready(self) -> None:
        """Start handlers for fetched messages while there is room, and wake the pull loop
        when another request fits."""
        while self._ready and self._in_flight < self._max_in_flight:
            msg, fetched = self._ready.popleft()
            self._in_flight += 1
            task = asyncio.create_task(self._handle(msg, fetched))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending and self._may_pull(self._limit - self._in_flight - len(self._ready)):
            self._wake.set()

    async def _handle(self, msg: Msg, fetched: float) -> None:
        observer = self._observer
        handling = observer.begin(msg) if observer is not None else None
        failure: BaseException | None = None
        try:
            if time.monotonic() - fetched >= PREFETCH_REFRESH:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
            try:
                outcome: Disposition = await self._handler(msg)
            except Exception as e:
                log.exception("%s: handler failed; the message will be redelivered", self._durable)
                outcome, failure = Nak(CRASH_DELAY), e
            if handling is not None:
                assert observer is not None
                observer.end(handling, _OUTCOME[type(outcome)] if failure is None else "error",
                             failure)  # fmt: skip
                handling = None
            await _settle(msg, outcome)
            self.handled += 1
        except nats.errors.Error as e:
            # the ack was lost: JetStream redelivers after ack_wait (at-least-once)
            log.warning("%s: could not settle message: %r", self._durable, e)
        finally:
            if handling is not None:  # cancelled while handling
                assert observer is not None
                observer.end(handling, "error")
            self._in_flight -= 1
            self._start_ready()


_OUTCOME: dict[type, str] = {Ack: "ack", Nak: "nak", Term: "term"}


def _consumer_gone(status: str, description: str) -> bool:
    """Whether a pull request's status says its consumer does not exist: deleted while the
    request waited (409), or no consumer to take the request at all (503 no responders;
    in a cluster also while the consumer elects a leader, when creating it is a no-op)."""
    return status == StatusCode.SERVICE_UNAVAILABLE or (
        status == StatusCode.CONFLICT and description.startswith("Consumer Deleted")
    )


async def _settle(msg: Msg, outcome: Disposition) -> None:
    if isinstance(outcome, Ack):
        await msg.ack()
    elif isinstance(outcome, Nak):
        await msg.nak(delay=outcome.delay if outcome.delay > 0 else None)
    else:
        await msg.term()
