"""The eventbridge sink's answers read entry by entry (botocore's Stubber, no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from tests.support.dispatcher import event, route
from vebus.config import parse_config
from vebus.errors import PermanentDeliveryError, RetryableDeliveryError
from vebus_dispatcher.sinks import SinkContext
from vebus_dispatcher.sinks.eventbridge import EventBridgeSink


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[EventBridgeSink, Stubber]]:
    sink_cfg = {"kind": "eventbridge", "region": "eu-west-1", "event_bus": "ops",
                "access_key_id": "k", "secret_access_key": "s"}  # fmt: skip
    r = parse_config({"routes": [route("aws", sink=sink_cfg)]}, {}).routes[0]
    sink = EventBridgeSink(r.sink, SinkContext(route=r, nc=None, js=None))  # type: ignore[arg-type]
    stubber = Stubber(sink._client)
    stubber.activate()
    yield sink, stubber
    await sink.close()
    stubber.deactivate()


def entries(*ids: str) -> dict[str, Any]:
    return {
        "Entries": [
            {"Source": "https://vc01.example.com/sdk", "DetailType": "VmPoweredOffEvent",
             "Detail": ANY, "EventBusName": "ops", "Time": ANY}
            for _ in ids
        ]
    }  # fmt: skip


async def test_a_failed_entry_fails_alone_and_is_retried_alone(
    bridge: tuple[EventBridgeSink, Stubber],
) -> None:
    sink, stub = bridge
    stub.add_response(
        "put_events",
        {"FailedEntryCount": 1, "Entries": [
            {"EventId": "e1"},
            {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"},
            {"EventId": "e3"},
        ]},
        entries("1", "2", "3"),
    )  # fmt: skip
    results = await asyncio.gather(
        *(sink.deliver(event(n), {}) for n in (1, 2, 3)), return_exceptions=True
    )
    assert results[0] is None
    assert results[2] is None
    err = results[1]
    assert isinstance(err, RetryableDeliveryError)
    assert err.code == "THROTTLED"
    assert "Rate exceeded" in str(err)

    # its retry is a call of its own, with that one entry
    stub.add_response("put_events", {"FailedEntryCount": 0, "Entries": [{"EventId": "e2"}]},
                      entries("2"))  # fmt: skip
    await sink.deliver(event(2), {})
    stub.assert_no_pending_responses()
    assert (sink.calls, sink.entries) == (2, 4)


async def test_entry_and_call_errors_are_retryable_or_permanent(
    bridge: tuple[EventBridgeSink, Stubber],
) -> None:
    sink, stub = bridge
    stub.add_response(
        "put_events",
        {"FailedEntryCount": 1,
         "Entries": [{"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed"}]},
    )  # fmt: skip
    with pytest.raises(PermanentDeliveryError, match="MalformedDetail"):
        await sink.deliver(event(1), {})

    stub.add_client_error("put_events", "AccessDeniedException", "no", http_status_code=400)
    with pytest.raises(PermanentDeliveryError) as perm:
        await sink.deliver(event(2), {})
    assert (perm.value.code, perm.value.status) == ("HTTP_4XX", 400)

    stub.add_client_error("put_events", "ThrottlingException", "slow", http_status_code=400)
    with pytest.raises(RetryableDeliveryError) as thr:
        await sink.deliver(event(3), {})
    assert thr.value.code == "THROTTLED"

    stub.add_client_error("put_events", "InternalException", "oops", http_status_code=500)
    with pytest.raises(RetryableDeliveryError) as five:
        await sink.deliver(event(4), {})
    assert (five.value.code, five.value.status) == ("HTTP_5XX", 500)


async def test_an_entry_over_256_kib_is_refused_before_sending(
    bridge: tuple[EventBridgeSink, Stubber],
) -> None:
    sink, _ = bridge
    huge = event(1, data=b'{"x": "' + b"a" * 300_000 + b'"}')
    with pytest.raises(PermanentDeliveryError) as e:
        await sink.deliver(huge, {})
    assert e.value.code == "INVALID_EVENT"
    assert sink.calls == 0
