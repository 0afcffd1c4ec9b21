"""The eventbridge sink: AWS EventBridge PutEvents through boto3, batched, entry by entry.

Each event becomes one entry: `DetailType` = the vSphere event class (the CloudEvent's
`subject`, or the class named in its `type`), `Detail` = the whole CloudEvent as JSON
(structured mode, `data` embedded), `Source` = the configured source or the CloudEvent's
source, `Time` = the event's time. Events of the route delivered at the same time share
PutEvents calls of up to 10 entries (and 256 KiB). The answer is read entry by entry
(`FailedEntryCount`): an entry that failed is retried on its own (ThrottlingException and
InternalFailure are retryable, any other entry error is permanent), while the others of
its batch are done. At-least-once: an entry with an EventId is stored by EventBridge.
boto3 blocks: calls run on the sink's own threads, without botocore's own retries
(retries are JetStream's), each bounded by the route's `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_json
from vebus.errors import (
    ConfigError,
    DeliveryError,
    ErrorCode,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.threads import SinkThreads

__all__ = ["MAX_BATCH", "EventBridgeSink", "call_error", "entry_error"]

#: PutEvents takes at most 10 entries and 256 KiB per call
MAX_BATCH = 10
MAX_BYTES = 256 * 1024
#: entry error codes worth another attempt
RETRYABLE_ENTRY_ERRORS = {"ThrottlingException", "InternalFailure", "InternalException"}


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(eq=False)
class _Pending:
    entry: dict[str, Any]
    size: int
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EventBridgeSink:
    """Queues each event's entry; a flusher sends the queue in PutEvents batches."""

    kind = "eventbridge"

    def __init__(self, sink: config.EventBridgeSink, ctx: SinkContext) -> None:
        self._sink = sink
        timeout = float(ctx.route.delivery.timeout)
        in_flight = ctx.route.delivery.max_in_flight
        client_config = botocore.config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
            max_pool_connections=max(2, math.ceil(in_flight / MAX_BATCH)),
            user_agent_extra=ctx.user_agent,
        )
        try:
            self._client = boto3.session.Session().client(
                "events",
                region_name=sink.region,
                endpoint_url=sink.endpoint_url,
                aws_access_key_id=sink.access_key_id,
                aws_secret_access_key=sink.secret_access_key,
                config=client_config,
            )
        except botocore.exceptions.NoRegionError:
            raise ConfigError(
                [
                    f"route {ctx.route.name}: sink.region: not set, and neither is AWS_REGION "
                    "in the dispatcher's environment"
                ]
            ) from None
        self._where = f"EventBridge bus {sink.event_bus!r}"
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        calls = max(2, math.ceil(in_flight / MAX_BATCH))
        self._threads = SinkThreads(f"eventbridge-{ctx.route.name}", calls)
        #: a batch is formed only when a call can start: meanwhile events gather
        self._free = asyncio.Semaphore(calls)
        #: PutEvents calls made, and entries sent (for tests and the load test)
        self.calls = 0
        self.entries = 0

    def entry(self, event: CloudEvent) -> dict[str, Any]:
        """The PutEvents entry for `event`."""
        out: dict[str, Any] = {
            "Source": self._sink.source or event.source,
            "DetailType": event.event_class(),
            "Detail": to_json(event).decode("utf-8"),
            "EventBusName": self._sink.event_bus,
        }
        if (when := _time(event.time)) is not None:
            out["Time"] = when
        return out

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        entry = self.entry(event)
        size = 14 + sum(len(str(entry[k]).encode()) for k in ("Source", "DetailType", "Detail"))
        if size > MAX_BYTES:
            raise PermanentDeliveryError(
                f"event {event.id}: {size} bytes as an EventBridge entry, more than the "
                f"{MAX_BYTES} PutEvents takes",
                code=ErrorCode.INVALID_EVENT,
            )
        pending = _Pending(entry, size)
        self._pending.append(pending)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
        self._wakeup.set()
        try:
            await asyncio.shield(pending.done)
        except asyncio.CancelledError:
            # the route's timeout: if the entry was not sent yet it never will be
            if not pending.done.done():
                pending.done.cancel()
            raise

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(0)  # let events delivered at the same moment join the batch
            while self._pending:
                await self._free.acquire()
                batch: list[_Pending] = []
                size = 0
                while self._pending and len(batch) < MAX_BATCH:
                    nxt = self._pending[0]
                    if nxt.done.done():  # given up on while it waited
                        self._pending.pop(0)
                        continue
                    if batch and size + nxt.size > MAX_BYTES:
                        break
                    batch.append(self._pending.pop(0))
                    size += nxt.size
                if not batch:
                    self._free.release()
                    continue
                task = asyncio.create_task(self._put(batch))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def _put(self, batch: list[_Pending]) -> None:
        self.calls += 1
        self.entries += len(batch)
        try:
            answer = await self._threads.run(
                self._client.put_events, Entries=[p.entry for p in batch]
            )
        except Exception as e:  # every entry of the call failed the same way
            err = call_error(self._where, e)
            for p in batch:
                _settle(p, err)
            return
        finally:
            self._free.release()
        results = answer.get("Entries") or []
        for i, p in enumerate(batch):
            result = results[i] if i < len(results) else {}
            if result.get("EventId"):
                _settle(p, None)
            else:
                _settle(p, entry_error(self._where, result))

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        await self._threads.close()
        self._client.close()


def _settle(p: _Pending, err: DeliveryError | None) -> None:
    if p.done.done():
        return
    if err is None:
        p.done.set_result(None)
    else:
        p.done.set_exception(err)


def entry_error(where: str, result: Mapping[str, Any]) -> DeliveryError:
    """The error for one failed PutEvents entry (`ErrorCode`, `ErrorMessage`)."""
    code = str(result.get("ErrorCode") or "NoEventId")
    message = f"{where} refused the entry: {code}: {result.get('ErrorMessage') or ''}".strip()
    if code in RETRYABLE_ENTRY_ERRORS:
        kind = ErrorCode.THROTTLED if "Throttl" in code else ErrorCode.HTTP_5XX
        return RetryableDeliveryError(message, code=kind)
    return PermanentDeliveryError(message, code=ErrorCode.SINK_ERROR)


def call_error(where: str, e: Exception) -> DeliveryError:
    """The error for a PutEvents call that failed as a whole."""
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"{where}: {code}: {err.get('Message', '')}"
        if "Throttl" in code or "LimitExceeded" in code:
            return RetryableDeliveryError(message, code=ErrorCode.THROTTLED, status=status)
        if isinstance(status, int) and status >= 500:
            return RetryableDeliveryError(message, code=ErrorCode.HTTP_5XX, status=status)
        return PermanentDeliveryError(message, code=ErrorCode.HTTP_4XX, status=status)
    if isinstance(
        e, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError
    ):
        return RetryableDeliveryError(f"{where}: timed out: {e}", code=ErrorCode.TIMEOUT)
    if isinstance(e, botocore.exceptions.NoCredentialsError):
        return PermanentDeliveryError(
            f"{where}: {e} (set access_key_id/secret_access_key, or give the dispatcher "
            "AWS credentials)",
            code=ErrorCode.SINK_ERROR,
        )
    if isinstance(e, botocore.exceptions.BotoCoreError | OSError):
        return RetryableDeliveryError(
            f"{where}: connection failed: {e}", code=ErrorCode.CONNECTION_FAILURE
        )
    return RetryableDeliveryError(f"{where}: {e!r}", code=ErrorCode.SINK_ERROR)
