"""A message over max_payload with its headers is refused before it reaches the server.

nats-py checks only the body against max_payload; a message its headers push over it used
to be sent, and the server closed the connection. Now `publish` raises
MessageTooLargeError, and a dead letter that cannot hold its body keeps the record
without it, saying so, and refuses to be replayed as an empty event.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from vebus import names
from vebus.bus.dlq import iter_dead_letters, publish_dead_letter, replay_dead_letter
from vebus.bus.publish import message_size, publish
from vebus.bus.streams import ensure_streams
from vebus.config import Config
from vebus.errors import ErrorCode, Exhausted, MessageTooLargeError, VebusError
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "big-1",
    "ce-source": "https://vc.example/sdk",
    "ce-type": "com.vmware.vsphere.VmPoweredOffEvent.v0",
    "content-type": "application/json",
}


async def test_a_message_over_max_payload_is_refused_and_the_connection_stays(
    nc: Client,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, Config().stream_settings())
    headers = {**HEADERS, MSG_ID: "big-1"}
    body = b'"' + b"x" * (nc.max_payload - message_size(b"", headers) - 2) + b'"'
    assert message_size(body, headers) == nc.max_payload  # exactly at the limit: allowed
    await publish(js, "vebus.events.vc.VmPoweredOffEvent", body, headers)

    longer = {**headers, MSG_ID: "big-1:some-route"}
    with pytest.raises(MessageTooLargeError, match="max_payload"):
        await publish(js, names.route_subject("some-route"), body, longer)
    assert nc.is_connected, "the server must never see the oversized message"

    await publish_dead_letter(
        js,
        route="some-route",
        sink="webhook",
        code=ErrorCode.TOO_LARGE,
        error="too large",
        headers=longer,
        body=body,
        attempts=0,
        exhausted=Exhausted.NOT_RETRYABLE,
    )
    (letter,) = [dl async for dl in iter_dead_letters(js, route="some-route")]
    assert letter.body == b""
    assert letter.body_omitted == len(body)
    event = letter.event()
    assert event is not None
    assert event.id == "big-1"
    with pytest.raises(VebusError, match="does not hold its event's body"):
        await replay_dead_letter(js, letter)
    assert [dl.id async for dl in iter_dead_letters(js, route="some-route")] == [letter.id]
