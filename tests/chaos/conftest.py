"""The chaos topology, shared by the fault tests of this package: `vebus up --nats-cluster 3`
with two replicas of every service (collector, filter, dispatcher, deadletter), the vCenter
simulator, and one route per test, each delivering to its own recording sink.

Starting that topology costs half a minute on a small machine, so it starts once for the
package (the first test that asks for `bus`) and stops after the last one; every test
leaves it as it found it (processes ready, its sink up), and tests that do not need it
run first. Each test's events carry its own CloudEvent source and go to its own route, so
its ledger counts only its own events. Every ledger is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.support.ledger import Ledger, SinkHub, UpCluster
from tests.support.sink import RecordingSink
from vebus import names

BIN = Path(sys.executable).parent

#: per route in VEBUS_ROUTES (streams.route_max_msgs): small enough for the route-full
#: test to fill, large enough that no other test's backlog comes near it
ROUTE_MAX_MSGS = 1500
#: the ack_wait of the `sigstop` route: its timeout (2s) + the dispatcher's margin (10s)
SIGSTOP_ACK_WAIT = 12.0

_LEDGERS = pytest.StashKey[list[str]]()

MakeLedger = Callable[..., Ledger]


@dataclass
class DelayedSink(RecordingSink):
    """A RecordingSink that records each request, then takes `hold` seconds to answer."""

    hold: float = 0.0

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        if self.hold:
            await asyncio.sleep(self.hold)
        return response


def source(route: str) -> str:
    """The CloudEvent source of the events a test sends to `route`."""
    return f"https://chaos.example/{route}"


def _retrying(**extra: Any) -> dict[str, Any]:
    return {"timeout": "2s", "backoff": {"initial": "200ms", "max": "2s"}, **extra}


#: route name -> (match, delivery, sink extras); the sink URL is the route's recording sink
ROUTES: dict[str, dict[str, Any]] = {
    "kills": {"delivery": _retrying()},
    "nodes": {"delivery": _retrying()},
    "sigstop": {"delivery": _retrying(max_in_flight=16)},
    # generous: the sink is down for up to a minute, and nothing may be dead-lettered
    "outage": {"delivery": _retrying(max_attempts=200)},
    "fail500": {
        "delivery": {
            "max_attempts": 3,
            "timeout": "2s",
            "backoff": {"initial": "100ms", "max": "200ms", "jitter": 0},
        }
    },
    "vcsim": {
        "match": {
            "type": ["com.vmware.vsphere.GeneralUserEvent.v0"],
            "data": {"Message": [{"prefix": "chaos-vcsim"}]},
        },
        "delivery": _retrying(),
    },
    # two routes take the same events: `full` (its sink down) fills up, `full-ok` goes on
    "full": {"match": {"source": [source("full")]}, "delivery": _retrying(max_attempts=1000)},
    "full-ok": {"match": {"source": [source("full")]}, "delivery": _retrying()},
    "bad": {"delivery": _retrying()},
    "secrets": {
        "delivery": {"max_attempts": 2, "timeout": "2s", "backoff": {"initial": "100ms"}},
        "sink": {
            "auth": {"kind": "bearer", "token": "${CHAOS_SINK_TOKEN}"},
            "headers": {"X-Chaos-Key": "${CHAOS_HEADER_SECRET}"},
        },
    },
    "signed": {
        "delivery": _retrying(),
        "sink": {"auth": {"kind": "hmac", "secret": "${CHAOS_HMAC_SECRET}"}},
    },
    "secret-url": {
        "delivery": {"max_attempts": 2, "timeout": "2s", "backoff": {"initial": "100ms"}},
        "sink": {"path": "/hook/${CHAOS_URL_SECRET}"},
    },
}


@dataclass
class Bus:
    """The running topology, its sinks and the secrets its config references."""

    cluster: UpCluster
    hub: SinkHub
    sinks: dict[str, RecordingSink]
    secrets: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def sink(self, route: str) -> RecordingSink:
        return self.sinks[route]

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `vebus <args> --config <the effective config>` as a user would."""
        return subprocess.run(
            [str(BIN / "vebus"), *args, "--config", str(self.cluster.effective_config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, **self.env),
            check=False,
        )

    async def max_ack_pending(self, js: JetStreamContext, *routes: str) -> int:
        """The largest max_ack_pending of the filter's and these routes' consumers."""
        infos = [await js.consumer_info(names.EVENTS_STREAM, names.FILTER_DURABLE)]
        for r in routes:
            infos.append(await js.consumer_info(names.ROUTES_STREAM, names.dispatcher_durable(r)))
        return max(int(i.config.max_ack_pending or 0) for i in infos)


def _config(sinks: dict[str, RecordingSink]) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        # `vebus up` adds a `console` route printing every event unless one exists: this
        # one takes nothing, so the run's output stays small
        {"name": "console", "match": {"source": ["nothing"]}, "sink": {"kind": "console"}}
    ]
    for name, spec in ROUTES.items():
        extra = dict(spec.get("sink", {}))
        path = extra.pop("path", "/events")
        sink = {"kind": "webhook", "url": f"http://127.0.0.1:{sinks[name].port}{path}", **extra}
        routes.append(
            {
                "name": name,
                "match": spec.get("match", {"source": [source(name)]}),
                "sink": sink,
                "delivery": spec["delivery"],
            }
        )
    return {
        "nats": {"user": "vebus", "password": "${CHAOS_NATS_PASSWORD}"},
        "streams": {"route_max_msgs": ROUTE_MAX_MSGS},
        "webhook": {"listen": "127.0.0.1:0", "bearer_token": "${CHAOS_WEBHOOK_TOKEN}"},
        "deadletter": {"api": {"listen": "127.0.0.1:0", "token": "${CHAOS_DLQ_API_TOKEN}"}},
        "routes": routes,
    }


@pytest.fixture(scope="package")
def bus(vcsim_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    workdir = tmp_path_factory.mktemp("chaos")
    secret_names = (
        "CHAOS_NATS_PASSWORD", "CHAOS_SINK_TOKEN", "CHAOS_HEADER_SECRET", "CHAOS_HMAC_SECRET",
        "CHAOS_URL_SECRET", "CHAOS_WEBHOOK_TOKEN", "CHAOS_DLQ_API_TOKEN",
    )  # fmt: skip
    values = {n: f"{n.lower().replace('_', '-')}-{secrets.token_hex(12)}" for n in secret_names}
    hub = SinkHub()
    sinks = {
        name: hub.add(DelayedSink(hold=0.2) if name == "sigstop" else RecordingSink())
        for name in ROUTES
    }
    env = dict(values, VEBUS_VCSIM=str(vcsim_binary))
    cluster = UpCluster(workdir, _config(sinks), env=env)
    try:
        cluster.start()
        yield Bus(cluster=cluster, hub=hub, sinks=sinks, secrets=values, env=env)
    finally:
        status = cluster.stop()
        hub.close()
        print(f"\nvebus up (chaos topology) exited with status {status}; logs in {workdir}")


@pytest.fixture
async def nc(bus: Bus) -> AsyncIterator[Client]:
    """A client of the cluster that fails over between its nodes."""
    await bus.cluster.wait_all_ready()
    client = await nats.connect(
        servers=bus.cluster.servers,
        user="vebus",
        password=bus.secrets["CHAOS_NATS_PASSWORD"],
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )
    yield client
    with contextlib.suppress(Exception):
        await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[MakeLedger]:
    """Make ledgers, each counting what its sink accepts from now on; each is printed when
    the test ends and again in the run's summary."""
    made: list[Ledger] = []

    def make(name: str, sink: RecordingSink | None = None) -> Ledger:
        led = Ledger(name)
        if sink is not None:
            led.watch(sink)
        made.append(led)
        return led

    yield make
    for led in made:
        led.finish()
        text = led.report()
        print("\n" + text)
        request.config.stash.setdefault(_LEDGERS, []).append(f"[{request.node.name}] {text}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ledgers = config.stash.get(_LEDGERS, [])
    if ledgers:
        terminalreporter.section("chaos ledgers")
        for text in ledgers:
            for line in text.splitlines():
                terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within tests/chaos, the tests that do not use the shared topology run first, so
    that it is not running beside their own processes."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if Path(str(item.path)).is_relative_to(here)]
    mine = [items[i] for i in slots]
    ordered = sorted(mine, key=lambda it: "bus" in getattr(it, "fixturenames", ()))
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item
