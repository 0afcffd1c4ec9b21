"""The dead-letter alert: one CloudEvent to the alert route when a route's dead letters
reach the threshold, one when they fall below it, however many replicas count."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import from_headers
from vebus.bus.dlq import delete_dead_letter, publish_dead_letter
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.errors import ErrorCode, Exhausted
from vebus.local.embedded import free_port, start_service

pytestmark = pytest.mark.integration

EXCEEDED = "io.vebus.deadletter.ThresholdExceeded.v0"
CLEARED = "io.vebus.deadletter.ThresholdCleared.v0"


async def store(js: JetStreamContext, route: str, n: int) -> int:
    await publish_dead_letter(
        js,
        route=route,
        sink="webhook",
        code=ErrorCode.HTTP_5XX if n % 2 else ErrorCode.TIMEOUT,
        error="failing",
        headers={
            "ce-id": f"{route}-{n}",
            "ce-source": "s",
            "ce-type": "t",
            "ce-specversion": "1.0",
            "Nats-Msg-Id": f"{route}:{n}",
        },
        body=b"{}",
        attempts=1,
        exhausted=Exhausted.MAX_ATTEMPTS,
    )
    return int((await js.stream_info(names.DLQ_STREAM)).state.last_seq)


async def alerts(js: JetStreamContext) -> list[tuple[str, dict[str, object]]]:
    out = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                names.ROUTES_STREAM, seq=seq, subject=names.route_subject("alerts"), next=True
            )
        except NotFoundError:
            return out
        ev = from_headers(raw.headers, raw.data or b"")
        out.append((ev.type, json.loads(ev.data)))
        seq = int(raw.seq or 0) + 1


async def wait_alerts(
    js: JetStreamContext, n: int, timeout: float = 10.0
) -> list[tuple[str, dict[str, object]]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(found := await alerts(js)) < n:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    return found


async def test_threshold_alert_once_per_change_with_two_replicas(stack: Stack, nc: Client) -> None:
    sink = {"kind": "webhook", "url": "http://127.0.0.1:9/"}
    stack.write_config(
        {
            "routes": [
                {"name": "r1", "sink": sink},
                {"name": "alerts", "match": {"source": ["vebus://deadletter"]}, "sink": sink},
            ],
            "deadletter": {
                "api": {"listen": f"127.0.0.1:{free_port()}"},
                "alert": {"route": "alerts", "threshold": 3, "interval": "200ms"},
            },
        }
    )
    js = nc.jetstream()
    await ensure_streams(js, load_config(stack.config_path).stream_settings())
    await asyncio.to_thread(stack.start, "deadletter")
    second = start_service(
        "deadletter",
        stack.config_path,
        health_port=free_port(),
        log_path=stack.workdir / "deadletter-2.log",
    )
    try:
        await store(js, "r1", 1)
        first = await store(js, "r1", 2)
        for n in range(3):
            await store(js, "alerts", n)  # the alert route's own: never alerted on
        await asyncio.sleep(1.0)
        assert await alerts(js) == []

        await store(js, "r1", 3)
        found = await wait_alerts(js, 1)
        assert found == [
            (EXCEEDED, {"route": "r1", "count": 3, "threshold": 3,
                        "codes": {"HTTP_5XX": 2, "TIMEOUT": 1}}),
        ], stack.logs()  # fmt: skip
        await store(js, "r1", 4)
        await asyncio.sleep(1.0)  # both replicas counted several times meanwhile
        assert len(await alerts(js)) == 1

        await delete_dead_letter(js, first)
        await delete_dead_letter(js, first - 1)
        found = await wait_alerts(js, 2)
        assert [t for t, _ in found] == [EXCEEDED, CLEARED], stack.logs()
        assert found[1][1]["count"] == 2
        await asyncio.sleep(1.0)
        assert len(await alerts(js)) == 2
    finally:
        second.stop()
    assert stack.stop("deadletter") == 0, stack.logs()
    assert "cannot listen" in second.output()  # the API port was the first replica's
