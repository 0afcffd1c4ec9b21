"""`vebus up --nats-cluster 3` with two replicas of each worker: one NATS node is killed
while events flow and comes back; every event is delivered (duplicates counted)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nats
import pytest
import yaml

from tests.e2e.test_up import _pids_of, _wait_for
from tests.support.ports import free_run
from tests.support.sink import RecordingSink
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.publish import publish
from vebus.errors import PublishError
from vebus.local.embedded import free_port
from vebus.names import MSG_ID

pytestmark = pytest.mark.chaos

BIN = Path(sys.executable).parent
EVENTS = 600
RATE = 60.0  # events/s: ten seconds of traffic


async def test_a_nats_node_dies_and_returns_without_losing_events(
    tmp_path: Path, vcsim_binary: Path, sink: RecordingSink
) -> None:
    nats_port = free_run(3)
    cfg = tmp_path / "vebus.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "name": "to-sink",
                        "match": {"source": ["https://chaos.example/sdk"]},
                        "sink": {"kind": "webhook", "url": sink.url},
                        "delivery": {"timeout": "5s", "backoff": {"initial": "200ms", "max": "2s"}},
                    }
                ]
            }
        )
    )
    log = tmp_path / "up.log"
    env = dict(os.environ, VEBUS_VCSIM=str(vcsim_binary), PYTHONUNBUFFERED="1")
    args = [
        str(BIN / "vebus"),
        "up",
        "--config",
        str(cfg),
        "--data-dir",
        str(tmp_path / "d"),
        "--nats-cluster",
        "3",
        "--nats-port",
        str(nats_port),
        "--vcsim-port",
        str(free_port()),
        "--quiet",
    ]
    for name in ("collector", "filter", "dispatcher", "deadletter"):
        args += ["--scale", f"{name}=2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    nc = None
    try:
        await asyncio.to_thread(_wait_for, log, "press Ctrl-C to stop", 90, proc)
        servers = [f"nats://127.0.0.1:{nats_port + i}" for i in range(3)]
        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        js = nc.jetstream()
        # the services create the streams: wait until the filter has its consumer
        for _ in range(200):
            with contextlib.suppress(Exception):
                await js.consumer_info("VEBUS_EVENTS", "vebus-filter")
                break
            await asyncio.sleep(0.2)

        node = str(tmp_path / "d" / "nats-1")
        killed = False
        for n in range(EVENTS):
            ev = CloudEvent(id=f"c{n}", source="https://chaos.example/sdk",
                            type="com.example.Chaos.v0", data=b'{"n": %d}' % n)  # fmt: skip
            headers = to_headers(ev, {MSG_ID: f"chaos:{n}"})
            while True:  # a producer that keeps what it could not hand over
                try:
                    await publish(js, "vebus.events.chaos.Chaos", ev.data, headers)
                    break
                except PublishError:
                    await asyncio.sleep(0.5)
            if n == EVENTS // 3 and not killed:
                (pid,) = _pids_of(f"-sd {node} ")
                os.kill(pid, signal.SIGKILL)
                killed = True
            await asyncio.sleep(1 / RATE)

        ok = await sink.wait_for(lambda: len(set(sink.accepted_ids())) >= EVENTS, timeout=120)
        ids = Counter(sink.accepted_ids())
        missing = {f"c{n}" for n in range(EVENTS)} - set(ids)
        assert not missing, f"lost {len(missing)}: {sorted(missing)[:10]}"
        assert ok
        dupes = sum(c - 1 for c in ids.values())
        print(f"\n{EVENTS} events delivered through a NATS node failure, {dupes} duplicates")
        assert "nats-1 exited with status -9; restarting" in log.read_text()
        # the node is back and serving
        await asyncio.to_thread(_wait_for_pid, node)
    finally:
        if nc is not None:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        try:
            status = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert status == 0, log.read_text()[-3000:]


def _wait_for_pid(node: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not _pids_of(f"-sd {node} "):
        assert time.monotonic() < deadline, "the killed NATS node was not restarted"
        time.sleep(0.2)
