"""The collector restarted (gracefully or by SIGKILL) skips no event key and publishes none
twice: the stream holds every key the simulator has, once each."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from tests.conftest import Vcsim
from tests.support.stack import Stack
from tests.support.streams import stream_messages
from tests.support.vsphere import VSphere
from vebus.local.embedded import start_vcsim
from vebus.names import CHECKPOINT_BUCKET, EVENTS_STREAM

pytestmark = pytest.mark.integration

PAGE = 20


def _vcenter(vcsim: Vcsim, **extra: object) -> dict[str, object]:
    """The simulator as vCenter `vc1`, followed from its first event."""
    return {"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass",
            "start": "earliest", **extra}  # fmt: skip


async def _keys(nc: Client) -> list[int]:
    msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.vc1.>")
    return [int((m.headers or {})["vebus-key"]) for m in msgs]


async def _wait_caught_up(nc: Client, vs: VSphere, timeout: float = 60.0) -> list[int]:
    """Wait until the stream holds the simulator's newest key; returns the stream's keys."""
    deadline = asyncio.get_running_loop().time() + timeout
    newest = await asyncio.to_thread(vs.newest_key)
    while True:
        keys = await _keys(nc)
        if keys and max(keys) >= newest:
            return keys
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream reached key {max(keys, default=None)}, vcsim {newest}")
        await asyncio.sleep(0.2)


async def test_restarts_neither_skip_nor_duplicate_keys(
    stack: Stack, nc: Client, vcsim: Vcsim
) -> None:
    stack.write_config(
        {
            "vcenters": [_vcenter(vcsim, page_size=PAGE, checkpoint_interval="200ms")],
            # JetStream's dedupe would hide a collector that re-publishes after a restart:
            # with a 1 s window the stream shows what the collector itself did
            "streams": {"duplicate_window": "1s"},
        }
    )
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        await asyncio.to_thread(stack.start, "collector")
        await asyncio.to_thread(vs.post_events, 30, "before")
        await _wait_caught_up(nc, vs)

        # graceful stop; more than a page of events while it is down (catch-up path)
        assert await asyncio.to_thread(stack.stop, "collector") == 0
        kv = await nc.jetstream().key_value(CHECKPOINT_BUCKET)
        checkpoint = msgspec.json.decode((await kv.get("collector.vc1")).value)
        assert checkpoint["key"] == max(await _keys(nc)), "checkpoint written on shutdown"
        await asyncio.to_thread(vs.post_events, 3 * PAGE, "while stopped")
        await asyncio.to_thread(stack.restart, "collector")
        await asyncio.to_thread(vs.post_events, 25, "after restart")
        await _wait_caught_up(nc, vs)

        # crash: the checkpoint may lag behind the stream; the stream is the truth
        await asyncio.to_thread(vs.post_events, 40, "before kill")
        await asyncio.sleep(1.5)  # past the dedupe window, before the next checkpoint write
        stack.procs["collector"].signal(signal.SIGKILL)
        await asyncio.to_thread(stack.procs["collector"].proc.wait)  # type: ignore[union-attr]
        await asyncio.to_thread(vs.post_events, 15, "while killed")
        await asyncio.to_thread(stack.restart, "collector")
        await asyncio.to_thread(vs.post_events, 10, "after kill")
        keys = await _wait_caught_up(nc, vs)

        expected = sorted(int(e.key) for e in await asyncio.to_thread(vs.events))
        dupes = {k: n for k, n in Counter(keys).items() if n > 1}
        assert not dupes, f"keys published twice: {dupes}"
        assert sorted(keys) == expected, (
            f"missing {sorted(set(expected) - set(keys))[:20]}, "
            f"extra {sorted(set(keys) - set(expected))[:20]}"
        )
    finally:
        await asyncio.to_thread(vs.close)


async def test_jetstream_drops_a_republished_msg_id(stack: Stack, nc: Client, vcsim: Vcsim) -> None:
    """The collector's Nats-Msg-Id makes a re-publish within the window harmless."""
    stack.write_config({"vcenters": [_vcenter(vcsim)]})
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    try:
        await asyncio.to_thread(stack.start, "collector")
        await _wait_caught_up(nc, vs)
    finally:
        await asyncio.to_thread(vs.close)
    msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.vc1.>")
    first = msgs[0]
    headers = {k: v for k, v in (first.headers or {}).items() if not k.startswith("Nats-")}
    headers["Nats-Msg-Id"] = (first.headers or {})["Nats-Msg-Id"]
    assert headers["Nats-Msg-Id"] == f"vc1:0:{headers['vebus-key']}"
    ack = await nc.jetstream().publish(first.subject, first.data or b"", headers=headers)
    assert ack.duplicate is True
    # (the stream may grow meanwhile: closing the test's session is a logout event)
    after = await stream_messages(nc, EVENTS_STREAM, "vebus.events.vc1.>")
    same = [m for m in after if (m.headers or {}).get("Nats-Msg-Id") == headers["Nats-Msg-Id"]]
    assert len(same) == 1


async def test_a_restarted_simulator_starts_a_new_epoch(
    stack: Stack, nc: Client, vcsim: Vcsim, tmp_path: Path
) -> None:
    """Keys going back (a restored vCenter, a restarted simulator) are a new epoch: the new
    events are published with new ids, not skipped as old ones."""
    stack.write_config({"vcenters": [_vcenter(vcsim)]})
    vs = await asyncio.to_thread(VSphere, vcsim.url)
    await asyncio.to_thread(stack.start, "collector")
    await asyncio.to_thread(vs.post_events, 40, "first life")
    before = await _wait_caught_up(nc, vs)
    await asyncio.to_thread(vs.close)

    # the simulator dies and comes back on the same address with keys from 1 again
    assert vcsim.proc.stop() == 0
    binary = Path(vcsim.proc.args[0])
    proc, url = start_vcsim(binary, port=vcsim.port, log_path=tmp_path / "vcsim2.log")
    try:
        assert url == vcsim.url
        vs2 = await asyncio.to_thread(VSphere, url)
        try:
            await asyncio.to_thread(vs2.post_events, 5, "second life")
            newest = await asyncio.to_thread(vs2.newest_key)
            assert newest < max(before), "the new simulator's keys must be behind"
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.vc1.>")
                second = [m for m in msgs if (m.headers or {}).get("vebus-epoch") == "1"]
                keys = [int((m.headers or {})["vebus-key"]) for m in second]
                if keys and max(keys) >= newest:
                    break
                assert asyncio.get_running_loop().time() < deadline, stack.logs()
                await asyncio.sleep(0.3)
            expected = sorted(int(e.key) for e in await asyncio.to_thread(vs2.events))
            assert sorted(keys) == expected
            ids = {(m.headers or {})["ce-id"] for m in second}
            assert ids == {f"1-{k}" for k in expected}
            first = [m for m in msgs if (m.headers or {}).get("vebus-epoch") == "0"]
            assert len(first) == len(before), "the first epoch's events are untouched"
        finally:
            await asyncio.to_thread(vs2.close)
    finally:
        proc.stop()
