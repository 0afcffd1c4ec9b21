"""The console logged in as its own NATS user, deploy/nats/auth.conf's `console` (docs/console.md,
"NATS permissions"): every page reads, the route store takes its changes, and nothing else is
allowed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import nats
import nats.errors
import pytest
import yaml

from tests.support.auth import PASSWORDS, start_auth_nats
from tests.support.console import OPERATOR_TOKEN, console_section
from tests.support.dispatcher import event
from vebus import names
from vebus.bus.cloudevent import to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.local.embedded import ManagedProcess, free_port, start_service

pytestmark = pytest.mark.integration

ADMIN_PASSWORD, CONSOLE_PASSWORD = PASSWORDS["admin"], PASSWORDS["console"]


def _start(name: str, config: Path, tmp: Path, user: str, password: str) -> ManagedProcess:
    env = dict(os.environ, VEBUS_NATS_USER=user, VEBUS_NATS_PASSWORD=password)
    return start_service(
        name, config, health_port=free_port(), log_path=tmp / f"{name}.log", env=env
    )


async def test_the_console_needs_no_more_than_its_user(tmp_path: Path) -> None:
    auth = start_auth_nats(tmp_path)
    url = auth.url
    console_port, dlq_port = free_port(), free_port()
    config = tmp_path / "vebus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": url, "user": "${VEBUS_NATS_USER}",
                         "password": "${VEBUS_NATS_PASSWORD}"},
                "routes": [{"name": "all", "sink": {"kind": "console"}}],
                "console": console_section(
                    f"127.0.0.1:{console_port}", f"http://127.0.0.1:{dlq_port}"
                ),
            }
        )
    )  # fmt: skip
    procs = [_start("deadletter", config, tmp_path, "admin", ADMIN_PASSWORD)]  # streams, buckets
    try:
        nc = await nats.connect(url, user="admin", password=ADMIN_PASSWORD)
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while True:  # the deadletter service made the streams and the route bucket
            try:
                await js.stream_info(names.EVENTS_STREAM)
                await js.key_value(names.ROUTES_BUCKET)
                break
            except nats.errors.Error:
                assert time.monotonic() < deadline, procs[0].output()[-2000:]
                await asyncio.sleep(0.2)
        ev = event(1)
        subject = names.event_subject("vc01", "VmPoweredOffEvent")
        headers = to_headers(ev, {names.MSG_ID: "x:1:1"})
        await publish_all(js, [OutgoingMessage(subject, ev.data, headers)])
        procs.append(_start("console", config, tmp_path, "console", CONSOLE_PASSWORD))
        base = f"http://127.0.0.1:{console_port}"
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"{base}/live") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert procs[1].poll() is None, procs[1].output()[-3000:]
                assert time.monotonic() < deadline, procs[1].output()[-3000:]
                await asyncio.sleep(0.2)
            for path in (
                "/routes",
                "/status",
                "/deadletters",
                "/events/1",
                "/history?type=VmPoweredOffEvent",
            ):
                async with http.get(base + path) as r:
                    assert r.status == 200, (path, await r.text())
            async with http.get(f"{base}/history", params={"object": "test-1"}) as r:
                assert "test-1" in await r.text()
            async with http.post(f"{base}/routes/all/pause", allow_redirects=False) as r:
                assert r.status == 303, await r.text()
            async with http.get(f"{base}/routes") as r:
                assert "PAUSED" in await r.text()
            async with http.post(
                f"{base}/routes/apply",
                data={"text": "routes:\n- name: other\n  sink: {kind: console}\n", "revision": "0"},
                allow_redirects=False,
            ) as r:
                assert r.status == 303, await r.text()
            # and a live stream delivers an event
            async with http.get(f"{base}/live/stream") as r:
                await publish_all(js, [OutgoingMessage(
                    names.event_subject("vc01", "VmPoweredOnEvent"), ev.data,
                    to_headers(ev, {names.MSG_ID: "x:1:2"}))])  # fmt: skip
                async with asyncio.timeout(10):
                    async for line in r.content:
                        if line.startswith(b"event: ev"):
                            break
        log = procs[1].output()
        assert "permissions violation" not in log.lower(), log[-3000:]
        # what it may not do: publish an event, or write another bucket
        consolenc = await nats.connect(url, user="console", password=CONSOLE_PASSWORD)
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            errors.append(e)

        await consolenc.close()
        consolenc = await nats.connect(
            url, user="console", password=CONSOLE_PASSWORD, error_cb=on_error
        )
        await consolenc.publish("vebus.events.vc01.Fake", b"{}")
        await consolenc.publish(f"$KV.{names.DEADLETTER_BUCKET}.x", b"{}")
        await consolenc.flush()
        await asyncio.sleep(0.5)
        assert len([e for e in errors if "permissions violation" in str(e).lower()]) == 2, errors
        await consolenc.close()
        await nc.close()
    finally:
        for p in procs:
            p.kill()
        auth.proc.kill()
