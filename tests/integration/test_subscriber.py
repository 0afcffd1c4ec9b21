"""Another program reads the events directly (examples/subscriber/follow.py, as the NATS user
`subscriber` of deploy/nats/auth.conf): it follows them at-least-once from where it stopped,
and that user can do nothing else: publish, delete a stream, read dead letters, use another
consumer, or subscribe to the events without its consumer."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.errors import APIError

from tests.support.auth import PASSWORDS, AuthNats
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import publish_dead_letter
from vebus.bus.streams import StreamSettings, ensure_streams
from vebus.errors import ErrorCode, Exhausted
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FOLLOW = REPO / "examples" / "subscriber" / "follow.py"


async def _publish(js: nats.js.JetStreamContext, keys: range) -> None:
    for key in keys:
        event = CloudEvent(id=str(key), source="https://vc01/sdk", type="com.example.Ev",
                           data=json.dumps({"Key": key}).encode())  # fmt: skip
        await js.publish(names.event_subject("vc01", "Ev"), event.data,
                         headers=to_headers(event, {MSG_ID: f"vc01:1:{key}"}))  # fmt: skip


def _follow(url: str, count: int) -> list[str]:
    """Run the example until it has printed `count` events; their ids."""
    env = dict(os.environ, NATS_URL=url, NATS_USER="subscriber",
               NATS_PASSWORD=PASSWORDS["subscriber"])  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(FOLLOW), "--count", str(count)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["id"] for line in out.stdout.splitlines()]


async def _denied(coro: object) -> str:
    try:
        await coro  # type: ignore[misc]
    except (nats.errors.Error, APIError, TimeoutError) as e:
        return repr(e)
    return ""


async def test_the_subscriber_follows_events_from_where_it_stopped_and_can_do_nothing_else(
    auth_nats: AuthNats,
) -> None:
    admin = await nats.connect(auth_nats.url, user="admin", password=PASSWORDS["admin"])
    try:
        js = admin.jetstream()
        await ensure_streams(js, StreamSettings())
        await _publish(js, range(1, 6))
        assert await asyncio.to_thread(_follow, auth_nats.url, 3) == ["1", "2", "3"]
        await _publish(js, range(6, 9))
        # the second run goes on after the last acknowledged event
        assert await asyncio.to_thread(_follow, auth_nats.url, 5) == ["4", "5", "6", "7", "8"]

        event = CloudEvent(id="dl", source="s", type="t")
        await publish_dead_letter(js, route="r", sink="webhook", code=ErrorCode.HTTP_5XX,
                                  error="x", headers=to_headers(event), body=b"", attempts=1,
                                  exhausted=Exhausted.MAX_ATTEMPTS)  # fmt: skip
    finally:
        await admin.close()

    errors: list[Exception] = []

    async def collect(e: Exception) -> None:
        errors.append(e)

    sub = await nats.connect(auth_nats.url, user="subscriber",
                             password=PASSWORDS["subscriber"], error_cb=collect)  # fmt: skip
    try:
        sjs = sub.jetstream(timeout=1)
        # no publishing, to the events or anywhere else
        assert await _denied(sjs.publish(names.event_subject("vc01", "Fake"), b"{}"))
        # no stream changes, no other consumer, no dead letters
        assert await _denied(sjs.delete_stream(names.EVENTS_STREAM))
        assert await _denied(sjs.purge_stream(names.EVENTS_STREAM))
        assert await _denied(sjs.delete_consumer(names.EVENTS_STREAM, names.FILTER_DURABLE))
        assert await _denied(sjs.pull_subscribe(names.DLQ_SUBJECTS, "dlq-reader",
                                                stream=names.DLQ_STREAM))  # fmt: skip
        assert await _denied(sjs.get_msg(names.DLQ_STREAM, 1))
        # the events only through its consumer: a plain subscription is refused
        await sub.subscribe(names.EVENTS_SUBJECTS)
        await sub.flush()
        await asyncio.sleep(0.5)
        assert any("permissions violation" in str(e).lower() for e in errors), errors
    finally:
        await sub.close()

    admin = await nats.connect(auth_nats.url, user="admin", password=PASSWORDS["admin"])
    try:
        info = await admin.jetstream().stream_info(names.EVENTS_STREAM)
        assert info.state.messages == 8  # nothing was published, purged or deleted
    finally:
        await admin.close()
