"""vebus.bus.acks against a real nats-server: what `js.publish` would give, in each case."""

from __future__ import annotations

import time

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError

from vebus import names
from vebus.bus import acks
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration


async def test_stored_duplicate_refused_no_responders_and_no_answer(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="ACKS", subjects=["acks.>"], max_msgs_per_subject=1,
                     discard=DiscardPolicy.NEW, discard_new_per_subject=True)
    )  # fmt: skip
    ack = await acks.publish(nc, "acks.a", b"1", {MSG_ID: "one"}, 5.0)
    assert (ack.stream, ack.seq, ack.duplicate) == ("ACKS", 1, False)
    again = await acks.publish(nc, "acks.a", b"1", {MSG_ID: "one"}, 5.0)
    assert (again.duplicate, again.seq) == (True, 1)
    with pytest.raises(APIError) as refused:  # the subject is full
        await acks.publish(nc, "acks.a", b"2", {MSG_ID: "two"}, 5.0)
    assert refused.value.err_code == names.JS_ERR_MAX_MSGS_PER_SUBJECT
    with pytest.raises(nats.errors.NoRespondersError):
        await acks.publish(nc, "nostream.x", b"", {}, 5.0)
    await nc.subscribe("silent.x")  # interest, but no stream: no answer ever comes
    monkeypatch.setattr(acks, "SWEEP", 0.05)
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await acks.publish(nc, "silent.x", b"", {}, 0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
