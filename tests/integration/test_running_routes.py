"""Routes added only with `vebus routes apply` are routes everywhere: replay targets for the
deadletter HTTP API and `vebus dlq replay`, and the sink kind of their POISON letters.

The config file here names one route; a second one exists only in the route store. Before
one route source served every service, the deadletter service read the config file alone:
it refused the applied route as a replay target and recorded its POISON letters' sink as
`unknown`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from tests.integration.test_deadletter import exhaust, poison
from tests.support.ports import free_run
from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import iter_dead_letters, publish_dead_letter
from vebus.errors import ErrorCode, Exhausted
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TOKEN = "running-routes-token-0123456789"
IN_FILE = {"name": "in-file", "sink": {"kind": "console"}}
APPLIED = {"name": "applied", "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/x"}}


def vebus(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vebus"), *args, "--config", str(stack.config_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def store_letter(nc: Client, key: int) -> None:
    event = CloudEvent(id=str(key), source="https://vc01/sdk", type="com.example.Failed",
                       data=json.dumps({"Key": key}).encode())  # fmt: skip
    await publish_dead_letter(
        nc.jetstream(), route="in-file", sink="console", code=ErrorCode.HTTP_5XX, error="x",
        headers=to_headers(event, {MSG_ID: f"vc01:1:{key}:in-file"}), body=event.data,
        attempts=1, exhausted=Exhausted.MAX_ATTEMPTS,
    )  # fmt: skip


async def routed_ids(nc: Client, route: str) -> list[str]:
    info = await nc.jetstream().stream_info(names.ROUTES_STREAM, subjects_filter=">")
    if not (info.state.subjects or {}).get(names.route_subject(route)):
        return []
    out, seq = [], 0
    while True:
        try:
            msg = await nc.jetstream().get_msg(
                names.ROUTES_STREAM, seq=seq + 1, subject=names.route_subject(route), next=True
            )
        except NotFoundError:  # no more messages on that subject
            return out
        out.append((msg.headers or {}).get("ce-id", ""))
        seq = msg.seq or seq + 1


async def test_an_applied_route_is_a_replay_target_and_names_its_poison_sink(
    stack: Stack, nc: Client, tmp_path: Path
) -> None:
    port = free_run(1)
    config: dict[str, Any] = {
        "routes": [IN_FILE],
        "deadletter": {"api": {"listen": f"127.0.0.1:{port}", "token": TOKEN}},
    }
    stack.write_config(config)
    stack.start("deadletter")
    applied_file = tmp_path / "routes.yaml"
    applied_file.write_text(yaml.safe_dump({"routes": [IN_FILE, APPLIED]}))
    out = vebus(stack, "routes", "apply", str(applied_file), "--timeout", "5")
    assert out.returncode == 0, out.stdout + out.stderr

    for key in (1, 2):
        await store_letter(nc, key)
    ids = [dl.id async for dl in iter_dead_letters(nc.jetstream())]

    # the HTTP API: a replay job to the applied route
    async with aiohttp.ClientSession() as http:
        reply = await http.post(
            f"http://127.0.0.1:{port}/v1/replays",
            json={"ids": [ids[0]], "to_route": "applied"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        body = await reply.json()
        assert reply.status == 202, body
        refused = await http.post(
            f"http://127.0.0.1:{port}/v1/replays",
            json={"ids": [ids[1]], "to_route": "nowhere"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert refused.status == 400
        assert "running route set" in (await refused.json())["error"]
    # the command line: the other letter to the applied route
    out = vebus(stack, "dlq", "replay", str(ids[1]), "--to-route", "applied")
    assert out.returncode == 0, out.stdout + out.stderr
    out = vebus(stack, "dlq", "replay", str(ids[1]), "--to-route", "nowhere")
    assert out.returncode == 2, out.stderr
    assert "no route 'nowhere'" in out.stderr

    deadline = asyncio.get_running_loop().time() + 20
    while sorted(await routed_ids(nc, "applied")) != ["1", "2"]:
        assert asyncio.get_running_loop().time() < deadline, stack.logs()
        await asyncio.sleep(0.2)

    # a POISON letter of the applied route names its sink kind (webhook), not `unknown`
    js = nc.jetstream()
    await js.purge_stream(names.ROUTES_STREAM)
    await js.add_consumer(
        names.ROUTES_STREAM,
        ConsumerConfig(durable_name=names.dispatcher_durable("applied"), ack_wait=1.0,
                       max_deliver=2,
                       filter_subject=names.route_subject("applied"),
                       ack_policy=AckPolicy.EXPLICIT),
    )  # fmt: skip
    event = CloudEvent(id="1001", source="https://vc01/sdk", type="com.example.Crashy")
    await js.publish(names.route_subject("applied"), b"{}",
                     headers=to_headers(event, {MSG_ID: "vc01:1:1001:applied"}))  # fmt: skip
    await exhaust(js, names.dispatcher_durable("applied"))
    (letter,) = await poison(js)
    assert letter.route == "applied"
    assert letter.sink == "webhook", stack.logs()
