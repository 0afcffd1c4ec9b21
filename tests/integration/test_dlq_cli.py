"""`vebus dlq` as a user runs it: a real subprocess against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.conftest import NatsServer
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import get_dead_letter, iter_dead_letters, publish_dead_letter
from vebus.bus.http import from_json
from vebus.bus.streams import ensure_streams
from vebus.config import parse_config
from vebus.errors import ErrorCode, Exhausted
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"


class Cli:
    """Runs `vebus dlq ...` against one NATS server, with no terminal on stdin."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url, self.cwd = url, cwd

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(VEBUS), "dlq", *args]
        if "--help" not in args:
            cmd[3:3] = ["--nats-url", self.url]
        return await asyncio.to_thread(
            subprocess.run,
            cmd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            timeout=60,
            check=False,
        )

    async def json(self, *args: str) -> list[dict[str, object]]:
        r = await self("list", "--json", *args)
        assert r.returncode == 0, r.stderr
        out: list[dict[str, object]] = json.loads(r.stdout)
        return out


def event(key: int, vm: str = "vm-01") -> CloudEvent:
    return CloudEvent(
        id=str(key),
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        time="2025-01-02T03:04:05Z",
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event"},
        data=json.dumps({"Key": key, "Vm": {"Name": vm}, "UserName": "admin"}).encode(),
    )


async def store(
    js: JetStreamContext,
    key: int,
    *,
    route: str = "r1",
    code: ErrorCode = ErrorCode.HTTP_5XX,
    status: int | None = 503,
) -> None:
    ev = event(key)
    await publish_dead_letter(
        js,
        route=route,
        sink="webhook",
        code=code,
        error=f"POST http://sink.example/events: {status} Service Unavailable " + "x" * 200,
        headers=to_headers(ev, {MSG_ID: f"vc01:1:{key}:{route}"}),
        body=ev.data,
        attempts=10,
        exhausted=Exhausted.MAX_ATTEMPTS,
        status=status,
        first_attempt=1_700_000_000.0,
    )


@pytest.fixture
async def js(nc: Client, nats_server: NatsServer) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_streams(js, parse_config({"nats": {"url": nats_server.url}}).stream_settings())
    return js


@pytest.fixture
def cli(nats_server: NatsServer, tmp_path: Path) -> Cli:
    return Cli(nats_server.url, tmp_path)


async def ids(js: JetStreamContext) -> list[int]:
    return [dl.id async for dl in iter_dead_letters(js)]


async def test_list_filters_and_show(js: JetStreamContext, cli: Cli) -> None:
    r = await cli("list")
    assert (r.returncode, r.stdout.strip()) == (0, "no dead letters")

    await store(js, 101)
    await store(js, 102, code=ErrorCode.POISON, status=None)
    await store(js, 103, route="r2", code=ErrorCode.TIMEOUT, status=None)

    rows = await cli.json()
    assert [row["event_id"] for row in rows] == ["101", "102", "103"]
    first = rows[0]
    assert first["route"] == "r1"
    assert first["sink"] == "webhook"
    assert first["code"] == "HTTP_5XX"
    assert first["status"] == 503
    assert first["attempts"] == 10
    assert first["exhausted"] == "max_attempts"
    assert first["event_type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert first["event_source"] == "https://vc01.example.com/sdk"
    assert first["stored_at"]
    assert str(first["error"]).startswith("POST http://sink.example/events: 503")

    assert [row["event_id"] for row in await cli.json("--route", "r1")] == ["101", "102"]
    assert [row["event_id"] for row in await cli.json("--code", "POISON")] == ["102"]
    assert [row["event_id"] for row in await cli.json("--code", "timeout")] == ["103"]
    assert await cli.json("--route", "r2", "--code", "HTTP_5XX") == []

    table = await cli("list", "--route", "r1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STORED", "ROUTE", "CODE"]
    assert len(lines) == 3
    assert "com.vmware.vsphere.VmPoweredOffEvent.v0" in lines[1]
    assert "POISON" in lines[2]
    assert max(len(line) for line in lines) < 250  # the long error is shortened

    ident = str(first["id"])
    shown = await cli("show", ident)
    assert shown.returncode == 0, shown.stderr
    assert f"dead letter {ident}" in shown.stdout
    assert "com.vmware.vsphere.VmPoweredOffEvent.v0" in shown.stdout
    assert "https://vc01.example.com/sdk" in shown.stdout
    assert '"Name": "vm-01"' in shown.stdout  # data, pretty-printed
    assert "max_attempts" in shown.stdout

    as_json = await cli("show", ident, "--json")
    doc = json.loads(as_json.stdout)
    assert doc["event"]["id"] == "101"
    assert doc["event"]["eventclass"] == "event"
    assert doc["data"]["Vm"]["Name"] == "vm-01"
    # the event is the CloudEvent in JSON, as tail --json prints it: routes test takes it
    assert doc["event"]["data"]["Vm"]["Name"] == "vm-01"
    original = (await get_dead_letter(js, int(ident))).event()
    shown_event = from_json(json.dumps(doc["event"]))
    assert original is not None
    assert shown_event.attributes() == original.attributes()
    assert json.loads(shown_event.data) == json.loads(original.data)
    assert doc["msg_id"] == "vc01:1:101:r1"

    missing = await cli("show", "999")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip().splitlines() == ["vebus: no dead letter with id 999"]


async def test_replay_one(js: JetStreamContext, cli: Cli) -> None:
    await store(js, 201)
    [ident] = await ids(js)

    r = await cli("replay", str(ident))
    assert r.returncode == 0, r.stderr
    assert "to route r1" in r.stdout
    assert "replayed 1 dead letter(s)" in r.stdout

    msg = await js.get_msg(names.ROUTES_STREAM, subject="vebus.routes.r1")
    headers = msg.headers or {}
    assert headers["ce-id"] == "201"
    assert headers["ce-type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert headers[MSG_ID] != "vc01:1:201:r1"
    assert headers[MSG_ID].startswith("vc01:1:201:r1:replay:")
    assert headers["ce-vebusreplay"]
    assert not any(k.lower().startswith("vebus-dlq-") for k in headers)
    assert json.loads(msg.data or b"")["Key"] == 201
    assert await cli.json() == []

    again = await cli("replay", str(ident))
    assert again.returncode == 1
    assert f"no dead letter with id {ident}" in again.stderr
    info = await js.stream_info(names.ROUTES_STREAM)
    assert info.state.messages == 1  # not replayed a second time


async def test_replay_to_other_route_and_bulk(js: JetStreamContext, cli: Cli) -> None:
    await store(js, 301)
    await store(js, 302, route="r2")
    await store(js, 303, route="r2")
    first, *_ = await ids(js)

    r = await cli("replay", str(first), "--to-route", "r9")
    assert r.returncode == 0, r.stderr
    moved = await js.get_msg(names.ROUTES_STREAM, subject="vebus.routes.r9")
    assert (moved.headers or {})["ce-id"] == "301"

    refused = await cli("replay", "--all")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert len(await cli.json()) == 2

    usage = await cli("replay", str(first), "--all", "--yes")
    assert usage.returncode == 2
    assert "exactly one of" in usage.stderr

    bulk = await cli("replay", "--route", "r2", "--yes")
    assert bulk.returncode == 0, bulk.stderr
    assert bulk.stdout.count("to route r2") == 2
    assert "replayed 2 dead letter(s)" in bulk.stdout
    assert await cli.json() == []
    info = await js.stream_info(names.ROUTES_STREAM)
    assert info.state.messages == 3


async def test_purge(js: JetStreamContext, cli: Cli) -> None:
    for key in (401, 402, 403):
        await store(js, key, route="r1" if key < 403 else "r2")
    first, *_ = await ids(js)

    r = await cli("purge", str(first))
    assert r.returncode == 0, r.stderr
    assert len(await cli.json()) == 2
    gone = await cli("purge", str(first))
    assert gone.returncode == 1
    assert f"no dead letter with id {first}" in gone.stderr

    refused = await cli("purge", "--route", "r2")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr

    r = await cli("purge", "--all", "--yes")
    assert r.returncode == 0, r.stderr
    assert "purged 2 dead letter(s)" in r.stdout
    assert (await cli("list")).stdout.strip() == "no dead letters"
    with pytest.raises(NotFoundError):
        await js.get_msg(names.ROUTES_STREAM, subject="vebus.routes.r1")  # nothing replayed


async def test_help_has_examples(cli: Cli) -> None:
    for command in ("list", "show", "replay", "purge"):
        r = await cli(command, "--help")
        assert r.returncode == 0, r.stderr
        assert "Example:" in r.stdout
        assert f"vebus dlq {command}" in r.stdout


async def test_without_streams_says_so(nc: Client, cli: Cli) -> None:
    r = await cli("list")
    assert r.returncode == 1
    assert "no VEBUS_DLQ stream" in r.stderr
