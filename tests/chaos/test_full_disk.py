"""A full disk: JetStream runs out of storage while events flow, then space is freed.

nats-server runs with `jetstream { max_file_store: ... }`, a small storage limit, and a
FILLER stream (another tenant of the same JetStream) takes what is left until JetStream
answers "insufficient resources" (10023). That is what nats-server does before the disk
itself is full: its limit is what it would take of the disk. (A store directory on a full
filesystem is worse: nats-server then answers nothing, and the stream that hit
"no space left on device" takes no writes until the server restarts; docs/guarantees.md.)

While it is full:
- the collector publishes nothing further and its checkpoint does not pass the last event
  VEBUS_EVENTS stored; the events vCenter records meanwhile are read again afterwards;
- the filter holds the events whose copies it could not store (not acknowledged);
- the dispatcher holds the copies whose dead letter it could not store;
- each one's /readyz answers 503 with the reason and the stream, and `vebus status` says so.
After FILLER is deleted every event arrives (ledger lost = 0) and every dead letter is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError

from tests.chaos.conftest import MakeLedger
from tests.conftest import Vcsim
from tests.support.ledger import Ledger, dead_letters, eventually, wait_until
from tests.support.sink import Received, RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus import names
from vebus.local.embedded import ManagedProcess, start_nats

pytestmark = pytest.mark.chaos

VEBUS = str(Path(sys.executable).parent / "vebus")
VCENTER = "vc1"
OK, REFUSED = "disk", "disk-refused"
PREFIX = "disk-"
#: JetStream's storage: the vebus streams and buckets, and room for FILLER to take
MAX_FILE_STORE = "24MB"
FILLER = "FILLER"
STORAGE_TEXT = "insufficient storage"


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[tuple[ManagedProcess, str]]:
    conf = tmp_path / "small.conf"
    conf.write_text(f"jetstream {{\n  max_file_store: {MAX_FILE_STORE}\n}}\n")
    proc, port = start_nats(tmp_path / "nats", extra_args=["-c", str(conf)])
    yield proc, f"nats://127.0.0.1:{port}"
    proc.kill()


@pytest.fixture
async def client(small_nats: tuple[ManagedProcess, str]) -> AsyncIterator[Client]:
    nc = await nats.connect(small_nats[1])
    yield nc
    with contextlib.suppress(Exception):
        await nc.close()


def message_of(r: Received) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(r.body).get("Message", ""))
    return ""


def post(url: str, messages: list[str]) -> list[str]:
    """Post one GeneralUserEvent per message; the messages as the sink will see them."""
    vs = VSphere(url)
    try:
        for m in messages:
            vs.post_events(1, m)
    finally:
        vs.close()
    return [f"{m} 0" for m in messages]  # post_events appends the index


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


async def fill(js: JetStreamContext) -> int:
    """Publish to FILLER until JetStream refuses for want of storage; bytes taken."""
    await js.add_stream(StreamConfig(name=FILLER, subjects=["filler.>"]))
    taken = 0
    for size in (256 * 1024, 16 * 1024, 512):
        body = b"x" * size
        while True:
            try:
                await js.publish("filler.x", body, timeout=5)
                taken += size
            except APIError as e:
                if e.err_code not in names.JS_STORAGE_ERRORS:
                    raise
                break
    return taken


async def last_stored_key(js: JetStreamContext) -> int | None:
    """The vCenter key of the last event VEBUS_EVENTS holds from the simulator."""
    try:
        raw = await js.get_last_msg(names.EVENTS_STREAM, names.vcenter_subjects(VCENTER))
    except NotFoundError:
        return None
    return int((raw.headers or {})[names.H_KEY])


async def checkpoint_key(js: JetStreamContext) -> int | None:
    kv = await js.key_value(names.CHECKPOINT_BUCKET)
    try:
        entry = await kv.get(f"collector.{names.token(VCENTER)}")
    except Exception:
        return None
    key = json.loads(entry.value or b"{}").get("key")
    return int(key) if key is not None else None


def _config(vcsim: Vcsim, ok: RecordingSink, refused: RecordingSink) -> dict[str, Any]:
    match = {
        "type": ["com.vmware.vsphere.GeneralUserEvent.v0"],
        "data": {"Message": [{"prefix": PREFIX}]},
    }
    delivery = {
        "max_attempts": 1000,
        "timeout": "2s",
        "backoff": {"initial": "200ms", "max": "1s", "jitter": 0},
    }
    return {
        "vcenters": [
            {
                "name": VCENTER,
                "url": vcsim.url,
                "username": "user",
                "password": "pass",
                "checkpoint_interval": "200ms",
            }
        ],
        "routes": [
            {
                "name": OK,
                "match": match,
                "sink": {"kind": "webhook", "url": ok.url},
                "delivery": delivery,
            },
            {
                "name": REFUSED,
                "match": match,
                "sink": {"kind": "webhook", "url": refused.url},
                "delivery": delivery,
            },
        ],
    }


async def test_a_full_jetstream_holds_everything_until_space_is_freed(
    tmp_path: Path,
    small_nats: tuple[ManagedProcess, str],
    client: Client,
    vcsim: Vcsim,
    ledger: MakeLedger,
) -> None:
    js = client.jetstream()
    ok_sink = await RecordingSink().start()
    # the refused route's sink is unavailable (503, retried) until the disk is full, then
    # refuses for good (400): its copies must become dead letters, which cannot be stored
    refused_sink = await RecordingSink(status=503).start()
    led: Ledger = ledger(f"full JetStream (max_file_store {MAX_FILE_STORE})", ok_sink)
    dead: Ledger = ledger("full JetStream, the refused route's dead letters")
    stack = Stack(tmp_path, small_nats[1])
    stack.write_config(_config(vcsim, ok_sink, refused_sink))
    run = str(time.time_ns())
    try:
        await asyncio.to_thread(stack.start)
        # 1. a few events flow
        led.sent += await asyncio.to_thread(
            post, vcsim.url, [f"{PREFIX}{run}-a{i}" for i in range(10)]
        )
        assert await wait_until(lambda: len(ok_sink.accepted) >= 10, 60), stack.logs()
        # 2. the filter is stopped; events wait in VEBUS_EVENTS
        stack.stop("filter")
        led.sent += await asyncio.to_thread(
            post, vcsim.url, [f"{PREFIX}{run}-b{i}" for i in range(20)]
        )
        assert await eventually(lambda: _key_at_least(js, len(led.sent)), 60), stack.logs()
        # 3. JetStream's storage is used up
        fault = led.fault(f"JetStream storage used up (FILLER took {await fill(js):,} bytes)")
        refused_sink.status = 400
        stored_before = await last_stored_key(js)
        # 4. the filter comes back to events it cannot forward; vCenter records more
        stack.start_unready("filter")
        late = await asyncio.to_thread(post, vcsim.url, [f"{PREFIX}{run}-c{i}" for i in range(20)])
        led.sent += late

        def reasons() -> dict[str, str]:
            return {n: readyz(stack.health[n])[1].get("reason", "") for n in stack.health}

        def all_say_full() -> bool:
            r = reasons()
            return all(STORAGE_TEXT in r.get(n, "") for n in ("collector", "filter", "dispatcher"))

        assert await wait_until(all_say_full, 60, interval=0.5), (reasons(), stack.logs()[-6000:])
        r = reasons()
        print("\n/readyz while full:\n" + "\n".join(f"  {n}: {v}" for n, v in r.items()))
        # the collector hits VEBUS_EVENTS, or first its lease or checkpoint bucket
        assert any(s in r["collector"] for s in ("VEBUS_EVENTS", "KV_vebus_")), r
        assert "VEBUS_ROUTES" in r["filter"]
        assert "VEBUS_DLQ" in r["dispatcher"]
        status = await asyncio.to_thread(
            subprocess.run,
            [VEBUS, "status", "--config", str(stack.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print("vebus status (stderr):\n" + status.stderr)
        assert f"not ready: JetStream: {STORAGE_TEXT} for VEBUS_ROUTES" in status.stderr
        # nothing was acknowledged or checkpointed past what was stored
        assert await last_stored_key(js) == stored_before, "VEBUS_EVENTS took events while full"
        cp = await checkpoint_key(js)
        assert cp is None or stored_before is None or cp <= stored_before, (cp, stored_before)
        info = await js.consumer_info(names.EVENTS_STREAM, names.FILTER_DURABLE)
        first_b = min(seq for seq, m in await _ours(js) if "-b" in m)
        # (events no route wants, e.g. the simulator's logins, are acknowledged: nothing
        # to store)
        assert info.ack_floor.stream_seq < first_b, "the filter acked events it could not forward"
        assert info.num_ack_pending + info.num_pending >= 20, info
        routed = await js.consumer_info(names.ROUTES_STREAM, names.dispatcher_durable(REFUSED))
        assert routed.num_ack_pending + routed.num_pending > 0, routed
        assert not await dead_letters(js, REFUSED), "a dead letter was stored while full"
        led.note(
            f"while full: VEBUS_EVENTS last key {stored_before}, checkpoint {cp}; filter ack "
            f"floor {info.ack_floor.stream_seq} (first held event {first_b}), "
            f"{info.num_ack_pending} held, "
            f"{info.num_pending} pending; {REFUSED}: {routed.num_ack_pending} held, "
            f"{routed.num_pending} pending; /readyz reasons: {r}"
        )
        # 5. space is freed
        await js.delete_stream(FILLER)
        ready = await wait_until(
            lambda: all(readyz(p)[0] == 200 for p in stack.health.values()), 90, interval=0.5
        )
        fault.recovered()
        assert ready, (reasons(), stack.logs())
        sent = set(led.sent)
        assert await wait_until(lambda: sent <= {message_of(x) for x in ok_sink.accepted}, 120), (
            stack.logs()
        )

        await asyncio.sleep(1)  # late duplicates
        led.take_deliveries(ok_sink.accepted[led.sink_from :], message_of)
        led.settled = True
        # the dead letters keep the event's body: count them by its Message
        records = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            records = await dead_letters(js, REFUSED)
            if len({json.loads(d.body).get("Message") for d in records}) >= len(sent):
                break
            await asyncio.sleep(0.5)
        dead.sent = list(sent)
        dead.delivered.update(
            {m: 1 for d in records if (m := json.loads(d.body).get("Message")) in sent}
        )
        dead.settled = True
        dead.note(f"{len(records)} dead letters ({', '.join(sorted({d.code for d in records}))})")
        assert not led.lost, led.report()
        assert not led.foreign, led.report()
        assert not dead.lost, dead.report()
        assert {d.code for d in records} == {"HTTP_4XX"}, dead.report()
    finally:
        stack.stop_all()
        await ok_sink.stop()
        await refused_sink.stop()


async def _ours(js: JetStreamContext) -> list[tuple[int, str]]:
    """(stream sequence, Message) of every GeneralUserEvent in VEBUS_EVENTS."""
    subject = names.event_subject(VCENTER, "GeneralUserEvent")
    out, seq = [], 1
    while True:
        try:
            raw = await js.get_msg(names.EVENTS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append((int(raw.seq or 0), str(json.loads(raw.data or b"{}").get("Message", ""))))
        seq = int(raw.seq or 0) + 1


async def _key_at_least(js: JetStreamContext, n: int) -> bool:
    """VEBUS_EVENTS holds at least `n` GeneralUserEvents of the simulator (ours)."""
    subject = names.event_subject(VCENTER, "GeneralUserEvent")
    try:
        info = await js.stream_info(names.EVENTS_STREAM, subjects_filter=subject)
    except Exception:
        return False
    return sum((info.state.subjects or {}).values()) >= n
