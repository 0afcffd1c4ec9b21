"""Services started before their NATS cluster is ready wait for it instead of crashing.

Under `docker compose up`, a three-node cluster and the services start together: a service
can connect to the first node while JetStream has no quorum yet, and its start-up calls
(streams, consumers, KV buckets, the route set) time out or find no leader. The services
start here against one node of a three-node cluster, the other two come up seconds later,
and every service must become ready without exiting, having said it waited, and then
route an event.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from tests.support.ports import free_run
from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.local.embedded import ManagedProcess, start_nats
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

SERVICES = ("collector", "filter", "dispatcher", "deadletter")


def _node(i: int, tmp: Path, client: int, cluster: int) -> ManagedProcess:
    routes = ",".join(f"nats://127.0.0.1:{cluster + k}" for k in range(3))
    proc, _ = start_nats(
        tmp / f"nats-{i}",
        port=client + i,
        log_path=tmp / f"nats-{i}.log",
        extra_args=["-n", f"node-{i}", "--cluster_name", "startup", "--cluster",
                    f"nats://127.0.0.1:{cluster + i}", "--routes", routes],
    )  # fmt: skip
    return proc


async def test_services_started_before_the_cluster_has_a_leader_wait_for_it(
    tmp_path: Path,
) -> None:
    client, cluster = free_run(3), free_run(3)
    url = ",".join(f"nats://127.0.0.1:{client + i}" for i in range(3))
    stack = Stack(tmp_path, url)
    stack.write_config(
        {
            "nats": {"url": url, "replicas": 3},
            "routes": [{"name": "all", "sink": {"kind": "console", "format": "line"}}],
        }
    )
    nodes = [_node(0, tmp_path, client, cluster)]  # one node: no JetStream quorum
    try:
        for name in SERVICES:
            stack.health[name] = 0
        stack.start_unready(*SERVICES)
        await asyncio.sleep(4)  # the services connect to node 0 and find no JetStream
        for name in SERVICES:
            proc = stack.procs[name]
            assert proc.poll() is None, f"{name} exited:\n{proc.output()[-3000:]}"
        nodes += [_node(i, tmp_path, client, cluster) for i in (1, 2)]
        for name in SERVICES:
            stack.wait_ready(name, 90)
        waited = [n for n in SERVICES if "JetStream not ready" in stack.procs[n].output()]
        assert waited, "no service had to wait: the test did not reach the race\n" + stack.logs()

        nc = await nats.connect(servers=url.split(","))
        try:
            event = CloudEvent(id="startup-1", source="test", type="com.example.Started")
            headers = to_headers(event, {MSG_ID: "startup-1"})
            await nc.jetstream().publish(
                names.event_subject("test", "Started"), b"{}", headers=headers, timeout=10
            )
        finally:
            await nc.close()
        deadline = time.monotonic() + 30
        while "startup-1" not in stack.procs["dispatcher"].output():
            assert time.monotonic() < deadline, "the event was not delivered\n" + stack.logs()
            await asyncio.sleep(0.2)
        for name in SERVICES:
            assert stack.procs[name].poll() is None, f"{name} exited\n{stack.logs()}"
    finally:
        for proc in stack.procs.values():
            proc.kill()
        for node in nodes:
            node.kill()
