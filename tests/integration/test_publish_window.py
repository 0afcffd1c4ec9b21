"""The bus's publish window against a real nats-server: acks in order, each message once,
a refused message raised as the typed error, and `on_ack` only over a stored prefix."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StreamConfig

from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.bus.pubwindow import PublishWindow
from vebus.errors import RouteFullError
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration


async def test_publish_all_returns_every_ack_in_order(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="WIN", subjects=["win.>"]))
    msgs = [OutgoingMessage(f"win.{n % 3}", str(n).encode(), {MSG_ID: f"w{n}"})
            for n in range(1000)]  # fmt: skip
    acks = await publish_all(js, msgs)
    assert [a.seq for a in acks] == list(range(1, 1001))
    again = await publish_all(js, msgs[:10])  # same Msg-Ids: deduplicated
    assert all(a.duplicate for a in again)
    assert (await js.stream_info("WIN")).state.messages == 1000


async def test_a_refused_message_stops_the_run_after_the_stored_prefix(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="FULL", subjects=["full.>"], max_msgs_per_subject=5,
                     discard=DiscardPolicy.NEW, discard_new_per_subject=True)
    )  # fmt: skip
    acked: list[int] = []
    items = [(OutgoingMessage("full.x", b"x", {MSG_ID: f"f{n}"}), n) for n in range(8)]
    with pytest.raises(RouteFullError):
        await PublishWindow(js, window=4).publish(items, acked.append)
    assert acked == [0, 1, 2, 3, 4]
