"""The functions service with real processes: nats-server, the filter, the functions
service and the dispatcher (one stack for the module, one route per case).

Covers what issue 18 asks of the service: replies routed to a second route, a raising
function retried then dead-lettered with its traceback and re-run by `vebus dlq replay`,
a hanging function killed at its timeout while a webhook route and another function go
on, a function that kills its worker every time becoming POISON without blocking its
route, SIGKILLed workers losing no event, a reply loop cut at the hop limit, an unknown
function refused by `vebus routes apply`, and no NATS credentials in a worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client

from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import DeadLetter, iter_dead_letters
from vebus.local.embedded import start_nats

pytestmark = pytest.mark.integration

#: in the services' own environment, as `vebus up --nats-auth` puts a service's NATS login
#: there: it must never reach a worker
SERVICE_ENV = {
    names.ENV_NATS_USER: "functions",
    names.ENV_NATS_PASSWORD: "nats-password-of-the-service",
}

FUNCTIONS = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    def record(name, text):
        with open(Path(os.environ["RECORDS"]) / name, "a") as f:
            f.write(text + "\\n")

    def echo(event, ctx):
        print("echo got", event.id)
        return {"echo": event.data}

    def flaky(event, ctx):
        if not (Path(os.environ["RECORDS"]) / "flaky-ok").exists():
            record("flaky", "fail " + event.id)
            raise ValueError("flaky is not ready for " + event.id)
        record("flaky", "ok " + event.id)

    def hang(event, ctx):
        record("hang", str(os.getpid()))
        time.sleep(600)

    def quick(event, ctx):
        record("quick", event.id)

    def suicide(event, ctx):
        if event.data.get("kill"):
            print("killing my own worker", flush=True)
            os.kill(os.getpid(), 9)
        record("suicide", event.id)

    def slow(event, ctx):
        time.sleep(0.3)
        record("slow", event.id)

    def loop(event, ctx):
        record("loop", event.extensions.get("vebushops", "0"))
        return {"again": True}

    def env(event, ctx):
        time.sleep(0.5)
        return {"pid": os.getpid()}
    """
)


def _fn(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "python": f"fns.py:{name}", "env": {"RECORDS": "${RECORDS}"}, **extra}


def _route(name: str, types: list[str], function: str, **delivery: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"type": types},
        "sink": {"kind": "function", "function": function},
        "delivery": {"backoff": {"initial": "200ms", "max": "1s"}, **delivery},
    }


def _config(sink_url: str) -> dict[str, Any]:
    t = "com.example.{}.v0".format
    return {
        "functions": [
            _fn("echo"),
            _fn("flaky", secrets={"FLAKY_TOKEN": "${FLAKY_TOKEN}"}),
            _fn("hang", timeout="4s", workers=1),
            _fn("quick"),
            _fn("suicide"),
            _fn("slow"),
            _fn("loop", max_hops=3, workers=1),
            _fn("env", workers=2),
        ],
        "routes": [
            _route("to-echo", [t("Ping")], "echo"),
            {"name": "echo-replies", "match": {"source": ["vebus://functions/echo"]},
             "sink": {"kind": "webhook", "url": sink_url}},
            _route("flaky", [t("Flaky")], "flaky", max_attempts=2),
            _route("hang", [t("Hang")], "hang", max_attempts=1, timeout="30s"),
            _route("quick", [t("Quick")], "quick"),
            {"name": "hook", "match": {"type": [t("Quick")]},
             "sink": {"kind": "webhook", "url": sink_url}},
            _route("suicide", [t("Suicide")], "suicide", max_attempts=2),
            _route("slow", [t("Slow")], "slow", max_attempts=10, max_in_flight=4),
            {"name": "loop", "match": {"$or": [{"type": [t("Seed")]},
                                               {"source": ["vebus://functions/loop"]}]},
             "sink": {"kind": "function", "function": "loop"}},
            _route("env", [t("Env")], "env"),
        ],
    }  # fmt: skip


class Bus:
    """The module's stack: processes, their folder, and helpers to drive it."""

    def __init__(self, root: Path, stack: Stack, sink: RecordingSink, records: Path) -> None:
        self.root, self.stack, self.sink, self.records = root, stack, sink, records

    def lines(self, name: str) -> list[str]:
        try:
            return (self.records / name).read_text().splitlines()
        except FileNotFoundError:
            return []

    def readyz(self, service: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.stack.health[service]}/readyz"
        with urllib.request.urlopen(url, timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def vebus(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "vebus"), *args, "--config",
             str(self.stack.config_path)],
            capture_output=True, text=True, timeout=60, cwd=self.root,
        )  # fmt: skip


class _SinkThread:
    """A RecordingSink on a loop of its own thread: it outlives each test's loop."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sink = asyncio.run_coroutine_threadsafe(RecordingSink().start(), self.loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    root = tmp_path_factory.mktemp("functions")
    records = root / "records"
    records.mkdir()
    (root / "fns.py").write_text(FUNCTIONS)
    nats_proc, port = start_nats(root / "nats")
    sink = _SinkThread()
    stack = Stack(root, f"nats://127.0.0.1:{port}")
    stack.write_config(_config(sink.sink.url))
    saved = dict(os.environ)
    os.environ.update(SERVICE_ENV, RECORDS=str(records), FLAKY_TOKEN="flaky-secret-value")
    try:
        stack.start("filter", "functions", "dispatcher", ready_timeout=60)
        os.environ.clear()
        os.environ.update(saved)
        yield Bus(root, stack, sink.sink, records)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for p in stack.procs.values():
            p.stop()
        sink.stop()
        nats_proc.kill()


@pytest.fixture
async def nc(bus: Bus) -> AsyncIterator[Client]:
    client = await nats.connect(bus.stack.nats_url)
    yield client
    await client.close()


async def publish(nc: Client, kind: str, data: Any, ident: str | None = None) -> str:
    """Publish one event as a source `test` would; returns its Msg-Id."""
    ident = ident or uuid.uuid4().hex[:12]
    ev = CloudEvent(id=ident, source="urn:test", type=f"com.example.{kind}.v0",
                    data=json.dumps(data).encode())  # fmt: skip
    msg_id = f"test:{ident}"
    await nc.jetstream().publish(
        names.event_subject("test", kind), ev.data, headers=to_headers(ev, {names.MSG_ID: msg_id})
    )
    return msg_id


async def eventually(what: str, probe: Callable[[], Any], timeout: float, bus: Bus) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(probe)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{bus.stack.logs()}")
        await asyncio.sleep(0.2)


async def dead_letters(nc: Client, route: str) -> list[DeadLetter]:
    return [dl async for dl in iter_dead_letters(nc.jetstream(), route=route)]


async def test_a_reply_is_routed_to_a_second_route(bus: Bus, nc: Client) -> None:
    follow_out = bus.root / "follow.txt"
    with open(follow_out, "w") as out:
        follower = subprocess.Popen(
            [str(Path(sys.executable).parent / "vebus"), "fn", "logs", "echo", "-f",
             "--config", str(bus.stack.config_path)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    await asyncio.sleep(2.0)  # it subscribes
    msg_id = await publish(nc, "Ping", {"hello": "world"})

    def replied() -> bool:
        return any(
            r.headers.get("ce-source") == "vebus://functions/echo" for r in bus.sink.accepted
        )

    await eventually("the reply at the second route", replied, 30, bus)
    (reply,) = [
        r for r in bus.sink.accepted if r.headers.get("ce-source") == "vebus://functions/echo"
    ]
    assert reply.headers["ce-type"] == "com.vebus.function.echo.v0"
    assert reply.headers["ce-vebushops"] == "1"
    assert reply.json() == {"echo": {"hello": "world"}}
    # its Msg-Id derives from the function and the routed event's: a retry stores it once
    stored = await nc.jetstream().get_last_msg(names.EVENTS_STREAM, "vebus.events.functions.echo")
    assert stored.headers is not None
    assert stored.headers[names.MSG_ID] == f"functions:echo:{msg_id}:to-echo:0"
    # the CLI sees the invocation and the function's output
    listed = json.loads((await asyncio.to_thread(bus.vebus, "fn", "list", "--json")).stdout)
    echo = next(f for f in listed if f["function"] == "echo")
    assert (echo["replicas"], echo["invocations"], echo["errors"]) == (1, 1, 0)
    assert echo["p50"] is not None
    logs = await asyncio.to_thread(bus.vebus, "fn", "logs", "echo")
    assert "echo got" in logs.stdout, logs.stdout + logs.stderr
    try:
        await eventually("the live line", lambda: "echo got" in follow_out.read_text(), 20, bus)
    finally:
        follower.terminate()
        follower.wait(10)


async def test_a_raising_function_is_retried_dead_lettered_with_its_traceback_and_replayed(
    bus: Bus, nc: Client
) -> None:
    await publish(nc, "Flaky", {}, ident="flaky-1")
    (dl,) = await eventually(
        "the dead letter", lambda: asyncio.run(_letters(bus, "flaky")), 30, bus
    )
    assert (dl.code, dl.attempts, dl.exhausted) == ("FUNCTION_ERROR", 2, "max_attempts")
    assert "ValueError: flaky is not ready for flaky-1" in dl.error
    assert "Traceback" in (dl.error_detail or "")
    assert 'raise ValueError("flaky is not ready for " + event.id)' in (dl.error_detail or "")
    assert bus.lines("flaky") == ["fail flaky-1", "fail flaky-1"]
    (bus.records / "flaky-ok").touch()
    replay = await asyncio.to_thread(bus.vebus, "dlq", "replay", str(dl.id))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    await eventually("the re-run", lambda: "ok flaky-1" in bus.lines("flaky"), 30, bus)
    assert not await dead_letters(nc, "flaky")


async def _letters(bus: Bus, route: str) -> list[DeadLetter]:
    client = await nats.connect(bus.stack.nats_url)
    try:
        return await dead_letters(client, route)
    finally:
        await client.close()


async def test_a_hanging_function_is_killed_while_the_routes_beside_it_flow(
    bus: Bus, nc: Client
) -> None:
    await publish(nc, "Hang", {}, ident="hang-1")
    pid = int((await eventually("the hang starts", lambda: bus.lines("hang"), 30, bus))[0])
    started = time.monotonic()
    before = len(bus.sink.accepted)
    ids = [await publish(nc, "Quick", {"n": i}, ident=f"quick-{i}") for i in range(10)]
    await eventually("the webhook route", lambda: len(bus.sink.accepted) >= before + 10, 10, bus)
    await eventually("the other function", lambda: len(bus.lines("quick")) >= 10, 10, bus)
    assert time.monotonic() - started < 3.5, "delivered while the function hung (timeout 4s)"
    assert len(ids) == 10
    (dl,) = await eventually("its dead letter", lambda: asyncio.run(_letters(bus, "hang")), 30, bus)
    assert (dl.code, dl.attempts) == ("FUNCTION_TIMEOUT", 1)
    assert "ran past its timeout of 4s" in dl.error
    assert not _alive(pid), "the hung worker was killed"


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


async def test_a_function_that_kills_its_worker_every_time_becomes_poison(
    bus: Bus, nc: Client
) -> None:
    await publish(nc, "Suicide", {"kill": True}, ident="poison-1")
    for i in range(5):
        await publish(nc, "Suicide", {"kill": False}, ident=f"fine-{i}")
    await eventually("the route goes on", lambda: len(bus.lines("suicide")) >= 5, 20, bus)
    (dl,) = await eventually("POISON", lambda: asyncio.run(_letters(bus, "suicide")), 30, bus)
    assert (dl.code, dl.exhausted, dl.attempts) == ("POISON", "max_deliveries", 2)
    assert "died during the invocation: killed by signal SIGKILL" in dl.error
    assert "killing my own worker" in (dl.error_detail or "")
    assert sorted(bus.lines("suicide")) == [f"fine-{i}" for i in range(5)]


async def test_sigkill_of_workers_mid_invocation_loses_no_event(bus: Bus, nc: Client) -> None:
    ids = [f"slow-{i}" for i in range(24)]
    for ident in ids:
        await publish(nc, "Slow", {}, ident=ident)
    killed = 0
    for _ in range(3):
        await asyncio.sleep(0.6)
        state = (await asyncio.to_thread(bus.readyz, "functions"))["functions"]["slow"]
        for pid in state["pids"]:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    done = await eventually(
        "every event", lambda: set(ids) <= set(bus.lines("slow")) or None, 60, bus
    )
    assert done
    seen = Counter(bus.lines("slow"))
    duplicates = {k: n for k, n in seen.items() if n > 1}
    print(f"killed {killed} worker(s); lost 0 of {len(ids)}; duplicates: {duplicates or 'none'}")
    assert killed >= 3
    assert not set(ids) - set(seen)


async def test_a_reply_chain_that_loops_is_cut_at_the_hop_limit(bus: Bus, nc: Client) -> None:
    await publish(nc, "Seed", {}, ident="seed-1")
    (dl,) = await eventually("HOP_LIMIT", lambda: asyncio.run(_letters(bus, "loop")), 30, bus)
    assert (dl.code, dl.exhausted) == ("HOP_LIMIT", "not_retryable")
    assert "passed through 3 function(s)" in dl.error
    assert bus.lines("loop") == ["0", "1", "2"]


async def test_a_workers_environment_holds_no_nats_credentials(bus: Bus, nc: Client) -> None:
    await publish(nc, "Env", {})
    await asyncio.sleep(0.2)  # the worker is in its sleep now
    state = (await asyncio.to_thread(bus.readyz, "functions"))["functions"]
    pids = [pid for f in state.values() for pid in f.get("pids") or []]
    assert pids
    service = bus.stack.procs["functions"].pid
    assert SERVICE_ENV[names.ENV_NATS_PASSWORD].encode() in _environ(service), "it has one"
    for pid in pids:
        env = _environ(pid)
        assert SERVICE_ENV[names.ENV_NATS_PASSWORD].encode() not in env
        assert b"NATS" not in env
    flaky = next(pid for pid in state["flaky"]["pids"])
    assert b"FLAKY_TOKEN=flaky-secret-value" in _environ(flaky), "its own secret"
    assert all(b"flaky-secret-value" not in _environ(p) for p in state["echo"]["pids"])


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_apply_refuses_a_route_naming_an_unknown_function(bus: Bus) -> None:
    routes = yaml.safe_load(bus.stack.config_path.read_text())["routes"]
    bad = bus.root / "bad.yaml"
    bad.write_text(yaml.safe_dump({"routes": [*routes, _route("typo", ["x"], "ech0")]}))
    refused = await asyncio.to_thread(bus.vebus, "routes", "apply", str(bad))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "route typo: no function named 'ech0' in the 1 running functions replica(s)" in (
        refused.stderr
    )
    listed = await asyncio.to_thread(bus.vebus, "routes", "list")
    assert "no routes stored" in listed.stdout
    good = bus.root / "good.yaml"
    good.write_text(yaml.safe_dump({"routes": routes}))
    applied = await asyncio.to_thread(bus.vebus, "routes", "apply", str(good))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "functions" in applied.stdout


async def test_a_route_that_becomes_a_function_route_moves_to_the_functions_service(
    bus: Bus, nc: Client
) -> None:
    """The dispatcher retires its consumer of the route (vebus-dispatch-hook), and the
    functions service, which could not create its own beside it on the work queue, does
    once it is gone (every RESTART_EVERY seconds)."""
    routes = yaml.safe_load(bus.stack.config_path.read_text())["routes"]
    moved = [
        {**r, "sink": {"kind": "function", "function": "quick"}} if r["name"] == "hook" else r
        for r in routes
    ]
    changed = bus.root / "moved.yaml"
    changed.write_text(yaml.safe_dump({"routes": moved}))
    applied = await asyncio.to_thread(bus.vebus, "routes", "apply", str(changed))
    assert applied.returncode in (0, 1), applied.stdout + applied.stderr
    js = nc.jetstream()

    async def consumers() -> set[str]:
        return {c.name for c in await js.consumers_info(names.ROUTES_STREAM)}

    deadline = time.monotonic() + 60
    while not (
        names.functions_durable("hook") in (now := await consumers())
        and names.dispatcher_durable("hook") not in now
    ):
        assert time.monotonic() < deadline, (now, bus.stack.logs())
        await asyncio.sleep(0.5)
    before = len(bus.lines("quick"))
    await publish(nc, "Quick", {}, ident="moved-1")
    await eventually(
        "both routes run the function", lambda: bus.lines("quick").count("moved-1") == 2, 30, bus
    )
    assert len(bus.lines("quick")) == before + 2
