"""`vebus routes apply` against a running filter and dispatcher: routes change without restarts.

Real processes throughout: nats-server, the filter and dispatcher services, the `vebus`
command as a subprocess, and an HTTP sink that records which route delivered each event
(each route posts to its own path).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client

from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.local.embedded import free_port, start_service
from vebus.names import MSG_ID

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"
VM_OFF = {"type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}]}


def hook(name: str, sink: RecordingSink, match: dict[str, Any] | None = None) -> dict[str, Any]:
    """A route posting to `/<name>` on the recording sink, retrying quickly."""
    out: dict[str, Any] = {
        "name": name,
        "sink": {"kind": "webhook", "url": f"http://127.0.0.1:{sink.port}/{name}"},
        "delivery": {"max_attempts": 5, "timeout": 5, "backoff": {"initial": 0.1, "max": 1}},
    }
    if match is not None:
        out["match"] = match
    return out


def event(n: int) -> CloudEvent:
    return CloudEvent(
        id=f"ev-{n}",
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        subject="VmPoweredOffEvent",
        extensions={"eventclass": "event"},
        data=json.dumps({"Key": n, "Vm": {"Name": f"vm-{n}"}}).encode(),
    )


async def publish(nc: Client, ev: CloudEvent) -> None:
    await nc.jetstream().publish(
        "vebus.events.vc01.VmPoweredOffEvent",
        ev.data,
        headers=to_headers(ev, {MSG_ID: f"vc01:1:{ev.id}"}),
        timeout=10,
    )


async def vebus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `vebus` command in a thread, so the sink in this loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(VEBUS), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def routes_file(tmp_path: Path, name: str, routes: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    return path


def delivered(sink: RecordingSink) -> dict[str, set[str]]:
    """Event id -> the routes (sink paths) that delivered it."""
    out: dict[str, set[str]] = {}
    for r in sink.accepted:
        out.setdefault(r.headers.get("ce-id", ""), set()).add(r.path.strip("/"))
    return out


async def start(stack: Stack, routes: list[dict[str, Any]]) -> None:
    stack.write_config({"routes": routes})
    await asyncio.to_thread(stack.start, "filter", "dispatcher")


async def test_apply_while_events_flow_loses_none_and_old_routes_match_nothing_after(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    # revision 1 (the config file): `old` takes VM power-offs; `audit` takes everything
    await start(stack, [hook("old", sink, VM_OFF), hook("audit", sink)])
    # a second filter replica: apply must wait for both
    port = free_port()
    second = start_service(
        "filter", stack.config_path, health_port=port, log_path=tmp_path / "filter-2.log"
    )
    stack.procs["filter-2"], stack.health["filter-2"] = second, port
    await asyncio.to_thread(stack.wait_ready, "filter-2")
    loop = asyncio.get_running_loop()
    published: list[tuple[str, float]] = []  # (id, loop time when its publish started)
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            published.append((f"ev-{n}", loop.time()))
            await publish(nc, event(n))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(2.0)
    # the new set: `new` takes what `old` took; `audit` unchanged
    new_set = routes_file(tmp_path, "new.yaml", [hook("new", sink, VM_OFF), hook("audit", sink)])
    result = await vebus("routes", "apply", str(new_set), "--config", str(stack.config_path))
    applied = loop.time()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{stack.logs()}"
    assert len([x for x in result.stdout.splitlines() if x.startswith("filter")]) == 2, (
        result.stdout
    )
    assert "dispatcher" in result.stdout, result.stdout
    await asyncio.sleep(2.0)
    stop.set()
    await task

    ids = {i for i, _ in published}
    ok = await sink.wait_for(
        lambda: (
            ids <= {i for i, paths in delivered(sink).items() if paths - {"audit"}}
            and ids <= {i for i, paths in delivered(sink).items() if "audit" in paths}
        ),
        timeout=60,
    )
    got = delivered(sink)
    missing = sorted(ids - {i for i, p in got.items() if p - {"audit"}}, key=len)
    assert ok, f"{len(missing)} event(s) not delivered: {missing[:10]}\n{stack.logs()}"
    # every event went through exactly one of old/new, and through the unchanged route
    for i in ids:
        assert len(got[i] - {"audit"}) == 1, (i, got[i])
        assert "audit" in got[i], i
    after = [i for i, t in published if t > applied]
    assert len(after) > 20, "the publisher should have run on after apply returned"
    assert [i for i in after if got[i] != {"new", "audit"}] == []
    # the change happened mid-stream: both routes delivered some
    assert any("old" in p for p in got.values())
    assert any("new" in p for p in got.values())

    listing = await vebus("routes", "list", "--config", str(stack.config_path))
    assert listing.returncode == 0, listing.stderr
    assert "revision" in listing.stdout
    assert "new" in listing.stdout
    assert "old" not in listing.stdout.split("\n", 1)[1]


async def test_an_invalid_apply_is_refused_and_the_running_routes_keep_working(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    await start(stack, [])
    good = routes_file(tmp_path, "good.yaml", [hook("first", sink, VM_OFF)])
    result = await vebus("routes", "apply", str(good), "--config", str(stack.config_path))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{stack.logs()}"
    revision = result.stdout.split("revision ", 1)[1].split()[0]

    bad = routes_file(
        tmp_path,
        "bad.yaml",
        [
            hook("second", sink, {"type": [{"prefx": "com.vmware"}]}),
            {"name": "third", "sink": {"kind": "webhook"}},
        ],
    )
    result = await vebus("routes", "apply", str(bad), "--config", str(stack.config_path))
    assert result.returncode == 2, result
    # the same lines as `vebus config check`: path, and what was expected
    assert "routes[0]: match.type[0]: unknown operator" in result.stderr, result.stderr
    assert "prefx" in result.stderr
    assert "routes[1].sink.url" in result.stderr, result.stderr
    assert "not applied" in result.stderr
    assert "Traceback" not in result.stderr

    listing = await vebus("routes", "list", "--config", str(stack.config_path))
    assert f"revision {revision}," in listing.stdout, listing.stdout
    await publish(nc, event(1))
    assert await sink.wait_for(lambda: "ev-1" in delivered(sink), timeout=30), stack.logs()
    assert delivered(sink)["ev-1"] == {"first"}

    # the same route with another sink URL: its worker restarts with the new sink
    moved = hook("first", sink, VM_OFF)
    moved["sink"]["url"] += "-moved"
    result = await vebus(
        "routes", "apply", str(routes_file(tmp_path, "moved.yaml", [moved])),
        "--config", str(stack.config_path),
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{stack.logs()}"
    await publish(nc, event(2))
    assert await sink.wait_for(lambda: "ev-2" in delivered(sink), timeout=30), stack.logs()
    assert delivered(sink)["ev-2"] == {"first-moved"}


async def test_apply_fails_naming_a_dispatcher_that_lacks_a_referenced_variable(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    await start(stack, [hook("kept", sink)])
    secret = hook("secret", sink, VM_OFF)
    secret["sink"]["url"] = "${VEBUS_TEST_SECRET_HOOK}"  # not in the dispatcher's environment
    new_set = routes_file(tmp_path, "secret.yaml", [hook("kept", sink), secret])
    result = await vebus(
        "routes", "apply", str(new_set), "--config", str(stack.config_path), "--timeout", "20"
    )
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}\n{stack.logs()}"
    out = result.stdout + result.stderr
    assert "VEBUS_TEST_SECRET_HOOK" in out, out
    assert "route secret" in out, out
    line = next(x for x in result.stdout.splitlines() if x.startswith("dispatcher"))
    assert "lacks ${VEBUS_TEST_SECRET_HOOK}" in line, result.stdout
    assert "filter" in result.stdout
    # the routes the dispatcher could resolve run; the secret's value never reached NATS
    await publish(nc, event(7))
    assert await sink.wait_for(lambda: "ev-7" in delivered(sink), timeout=30), stack.logs()
    listing = await vebus("routes", "list", "--config", str(stack.config_path))
    assert "secret" in listing.stdout
    assert "kept" in listing.stdout
