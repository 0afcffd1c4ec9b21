"""`vebus replay --from --to`: a time window of VEBUS_EVENTS through the routes again."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.conftest import NatsServer
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.streams import ensure_streams
from vebus.config import parse_config
from vebus.names import MSG_ID
from vebus.timespec import format_time

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"
OFF = "com.vmware.vsphere.VmPoweredOffEvent.v0"
ON = "com.vmware.vsphere.VmPoweredOnEvent.v0"
#: pause between bursts: the window's edges fall in the middle of it
PAUSE = 1.0


def config(url: str) -> dict[str, Any]:
    sink = {"kind": "webhook", "url": "http://127.0.0.1:9/"}
    return {
        "nats": {"url": url},
        "routes": [
            {"name": "off", "match": {"type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}]},
             "sink": sink},
            {"name": "all", "sink": sink},
            {"name": "on", "match": {"type": [ON]}, "sink": sink},
        ],
    }  # fmt: skip


@pytest.fixture
async def js(nc: Client, nats_server: NatsServer) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_streams(js, parse_config(config(nats_server.url)).stream_settings())
    return js


@pytest.fixture
def config_file(tmp_path: Path, nats_server: NatsServer) -> Path:
    path = tmp_path / "vebus.yaml"
    path.write_text(yaml.safe_dump(config(nats_server.url), sort_keys=False))
    return path


async def burst(js: JetStreamContext, keys: range, kind: str = OFF) -> list[dt.datetime]:
    """Publish events with these keys; returns the times JetStream stored them."""
    times = []
    for key in keys:
        ev = CloudEvent(
            id=str(key),
            source="https://vc01.example.com/sdk",
            type=kind,
            data=json.dumps({"Key": key}).encode(),
        )
        cls = kind.split(".")[-2]
        ack = await js.publish(
            names.event_subject("vc01", cls),
            ev.data,
            headers=to_headers(ev, {MSG_ID: f"vc01:1:{key}"}),
        )
        raw = await js.get_msg(names.EVENTS_STREAM, seq=ack.seq)
        assert raw.time is not None
        times.append(raw.time)
    return times


def midpoint(a: dt.datetime, b: dt.datetime) -> str:
    return format_time(a + (b - a) / 2)


async def vebus(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(VEBUS), "replay", *args, "--config", str(config_file)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


async def route(js: JetStreamContext, name: str) -> list[dict[str, str]]:
    """Headers of every message on the route."""
    out: list[dict[str, str]] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                names.ROUTES_STREAM, seq=seq, subject=names.route_subject(name), next=True
            )
        except NotFoundError:
            return out
        out.append(dict(raw.headers or {}))
        seq = int(raw.seq or 0) + 1


async def test_a_window_goes_to_the_named_route_exactly(
    js: JetStreamContext, config_file: Path
) -> None:
    first = await burst(js, range(1, 11))
    await asyncio.sleep(PAUSE)
    middle = await burst(js, range(11, 21))
    middle += await burst(js, range(21, 23), kind=ON)
    # not a CloudEvent: counted, skipped
    await js.publish("vebus.events.vc01.Broken", b"{}", headers={MSG_ID: "vc01:1:broken"})
    await asyncio.sleep(PAUSE)
    last = await burst(js, range(23, 33))
    start, end = midpoint(first[-1], middle[0]), midpoint(middle[-1], last[0])

    r = await vebus(config_file, "--from", start, "--to", end, "--route", "off", "--json",
                    "--run-id", "run1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["read"], summary["invalid"]) == (13, 1)
    assert summary["routes"] == {
        "off": {"matched": 10, "published": 10, "duplicate": 0, "refused": 0, "failed": 0}
    }
    (start_doc, end_doc) = (summary["from"], summary["to"])
    assert (start_doc, end_doc) == (start, end)

    copies = await route(js, "off")
    assert [h["ce-id"] for h in copies] == [str(k) for k in range(11, 21)]
    for h, key in zip(copies, range(11, 21), strict=True):
        assert h[MSG_ID] == f"replay:vc01:1:{key}:off:run1"
        assert h["ce-vebusreplay"].endswith("Z")
        assert h["ce-source"] == "https://vc01.example.com/sdk"
    assert await route(js, "all") == []
    assert await route(js, "on") == []

    again = await vebus(config_file, "--from", start, "--to", end, "--route", "off", "--json",
                        "--run-id", "run1")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["routes"]["off"] == {
        "matched": 10, "published": 0, "duplicate": 10, "refused": 0, "failed": 0
    }  # fmt: skip
    assert len(await route(js, "off")) == 10

    dry = await vebus(config_file, "--from", start, "--to", end, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {k: v["matched"] for k, v in json.loads(dry.stdout)["routes"].items()} == {
        "off": 10, "all": 12, "on": 2
    }  # fmt: skip
    assert await route(js, "all") == []

    every = await vebus(config_file, "--from", start, "--to", end)
    assert every.returncode == 0, every.stderr
    lines = every.stdout.splitlines()
    assert lines[0].startswith("replay ")
    assert "read 13 event(s), 1 not valid CloudEvents (skipped)" in lines[1]
    table = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert table == {"off": ["10", "10", "0", "0", "0"], "all": ["12", "12", "0", "0", "0"],
                     "on": ["2", "2", "0", "0", "0"]}  # fmt: skip
    assert [h["ce-id"] for h in await route(js, "all")] == [str(k) for k in range(11, 23)]
    assert [h["ce-id"] for h in await route(js, "on")] == ["21", "22"]
    assert len(await route(js, "off")) == 20  # a new run id: sent again


async def test_mistakes_are_reported(js: JetStreamContext, config_file: Path) -> None:
    r = await vebus(config_file, "--from", "1h", "--route", "nope")
    assert r.returncode == 2
    assert "no route 'nope'" in r.stderr
    r = await vebus(config_file, "--from", "1h", "--to", "2h")
    assert r.returncode == 2
    assert "--from" in r.stderr
    r = await vebus(config_file, "--from", "2025-01-02T03:04:05")
    assert r.returncode == 2
    assert "UTC offset" in r.stderr
    r = await vebus(config_file, "--from", "1h", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["read"] == 0
