"""SIGKILL the deadletter service in the middle of a replay asked for over its HTTP API:
every dead letter ends up either still a dead letter or on its route, never both, never
neither, and the restarted service finishes the replay."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import aiohttp
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import iter_dead_letters, publish_dead_letter
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.errors import ErrorCode, Exhausted
from vebus.local.embedded import free_port
from vebus.names import MSG_ID

pytestmark = pytest.mark.e2e

TOKEN = "kill-test-token-0123456789"
LETTERS = 60
#: dead letters per second: the replay takes LETTERS / RATE = 3 seconds
RATE = 20
#: the service is killed once this many are on the route
KILL_AT = 20


async def dead_letter_events(js: JetStreamContext) -> list[str]:
    return [ev.id async for dl in iter_dead_letters(js) if (ev := dl.event()) is not None]


async def route_events(js: JetStreamContext) -> list[str]:
    out: list[str] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                names.ROUTES_STREAM, seq=seq, subject=names.route_subject("r1"), next=True
            )
        except NotFoundError:
            return out
        out.append((raw.headers or {})["ce-id"])
        seq = int(raw.seq or 0) + 1


async def on_route(js: JetStreamContext) -> int:
    info = await js.stream_info(names.ROUTES_STREAM)
    return int(info.state.messages)


async def test_killed_mid_replay_loses_nothing_and_duplicates_nothing(
    stack: Stack, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEBUS_DLQ_TOKEN", TOKEN)
    port = free_port()
    stack.write_config(
        {
            "routes": [{"name": "r1", "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/"}}],
            "deadletter": {"api": {"listen": f"127.0.0.1:{port}", "token": "${VEBUS_DLQ_TOKEN}"}},
        }
    )
    js = nc.jetstream()
    await ensure_streams(js, load_config(stack.config_path).stream_settings())
    events = [str(1000 + n) for n in range(LETTERS)]
    for key in events:
        ev = CloudEvent(
            id=key,
            source="https://vc01.example.com/sdk",
            type="com.vmware.vsphere.VmPoweredOffEvent.v0",
            data=json.dumps({"Key": int(key)}).encode(),
        )
        await publish_dead_letter(
            js,
            route="r1",
            sink="webhook",
            code=ErrorCode.HTTP_5XX,
            error="503",
            headers=to_headers(ev, {MSG_ID: f"vc01:1:{key}:r1"}),
            body=ev.data,
            attempts=3,
            exhausted=Exhausted.MAX_ATTEMPTS,
        )
    await asyncio.to_thread(stack.start, "deadletter")
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/replays", json={"all": True, "rate": RATE}, headers=auth
        ) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["id"]

        deadline = asyncio.get_running_loop().time() + 30
        while await on_route(js) < KILL_AT:
            assert asyncio.get_running_loop().time() < deadline, stack.logs()
            await asyncio.sleep(0.02)
        stack.procs["deadletter"].signal(signal.SIGKILL)
        assert await asyncio.to_thread(stack.procs["deadletter"].proc.wait, 10) == -signal.SIGKILL  # type: ignore[union-attr]

        # right after the kill: nothing is lost; at most the one in flight is in both places
        waiting, sent = await dead_letter_events(js), await route_events(js)
        assert set(waiting) | set(sent) == set(events)
        assert len(set(waiting) & set(sent)) <= 1
        assert KILL_AT <= len(sent) < LETTERS, "the kill came after the replay had finished"
        assert max(Counter(sent).values()) == 1

        # a restarted replica takes the job over and finishes it
        await asyncio.to_thread(stack.restart, "deadletter")
        deadline = asyncio.get_running_loop().time() + 45
        while True:
            async with http.get(f"{base}/v1/replays/{job_id}") as r:
                job = await r.json()
            if job["state"] != "running":
                break
            assert asyncio.get_running_loop().time() < deadline, (job, stack.logs())
            await asyncio.sleep(0.25)
    assert job["state"] == "done", job

    waiting, sent = await dead_letter_events(js), await route_events(js)
    assert waiting == []
    assert sorted(sent) == events  # each exactly once
    assert stack.stop("deadletter") == 0, stack.logs()
