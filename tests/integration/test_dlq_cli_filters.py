"""`vebus dlq` filters by time and code, and rate-limited bulk replays."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.conftest import NatsServer
from tests.integration.test_dlq_cli import Cli, ids, store
from vebus import names
from vebus.bus.streams import ensure_streams
from vebus.config import parse_config
from vebus.errors import ErrorCode
from vebus.timespec import format_time

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(nc: Client, nats_server: NatsServer) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_streams(js, parse_config({"nats": {"url": nats_server.url}}).stream_settings())
    return js


@pytest.fixture
def cli(nats_server: NatsServer, tmp_path: Path) -> Cli:
    return Cli(nats_server.url, tmp_path)


async def test_list_and_purge_by_time(js: JetStreamContext, cli: Cli) -> None:
    await store(js, 101)
    await store(js, 102)
    await asyncio.sleep(1.1)
    cut = format_time(dt.datetime.now(dt.UTC))
    await asyncio.sleep(0.1)
    await store(js, 103, code=ErrorCode.TIMEOUT, status=None)

    assert [r["event_id"] for r in await cli.json("--since", cut)] == ["103"]
    assert [r["event_id"] for r in await cli.json("--until", cut)] == ["101", "102"]
    assert [r["event_id"] for r in await cli.json("--since", "10m")] == ["101", "102", "103"]
    assert await cli.json("--until", "1h") == []
    assert await cli.json("--since", cut, "--code", "HTTP_5XX") == []

    bad = await cli("list", "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since" in bad.stderr
    assert "RFC 3339" in bad.stderr

    purged = await cli("purge", "--until", cut, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 dead letter(s)" in purged.stdout
    assert [r["event_id"] for r in await cli.json()] == ["103"]


async def test_replay_by_filter_at_a_rate(js: JetStreamContext, cli: Cli) -> None:
    for key in range(201, 209):
        await store(js, key, code=ErrorCode.HTTP_5XX)
    await store(js, 209, code=ErrorCode.TIMEOUT, status=None)
    await store(js, 210, route="r2")

    started = time.monotonic()
    r = await cli("replay", "--route", "r1", "--code", "HTTP_5XX", "--rate", "10", "--yes")
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("to route r1") == 8
    assert "replayed 8 dead letter(s)" in r.stdout
    assert took >= 0.7  # 8 replays, 0.1s apart
    left = [row["event_id"] for row in await cli.json()]
    assert left == ["209", "210"]
    info = await js.stream_info(names.ROUTES_STREAM)
    assert info.state.messages == 8

    nothing = await cli("replay", "--code", "POISON", "--yes")
    assert nothing.returncode == 0, nothing.stderr
    assert "replayed 0 dead letter(s)" in nothing.stdout

    both = await cli("replay", "--route", "r1", "--all", "--yes")
    assert both.returncode == 2
    assert "exactly one of" in both.stderr

    fast = await cli("replay", "--all", "--rate", "0", "--yes")
    assert fast.returncode == 0, fast.stderr
    assert "replayed 2 dead letter(s)" in fast.stdout
    assert await ids(js) == []


async def test_to_route_must_be_a_configured_route(
    js: JetStreamContext, cli: Cli, nats_server: NatsServer
) -> None:
    (cli.cwd / "vebus.yaml").write_text(
        yaml.safe_dump(
            {
                "nats": {"url": nats_server.url},
                "routes": [{"name": "r1", "sink": {"kind": "console"}}],
            }
        )
    )
    await store(js, 301)
    [ident] = await ids(js)
    r = await cli("replay", str(ident), "--to-route", "r9")
    assert r.returncode == 2
    assert "no route 'r9'" in r.stderr
    assert await ids(js) == [ident]
    ok = await cli("replay", str(ident), "--to-route", "r1")
    assert ok.returncode == 0, ok.stderr
    assert await ids(js) == []
