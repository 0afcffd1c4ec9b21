"""`docker compose up` of the repository's compose.yaml, for real, as a user runs it: the
images scripts/images builds with no registry, the three NATS nodes, the project's vCenter
simulator asking for the .env login, the five services and the console; then what the user
cares about: everything healthy, a VM powered off reaching a sink and shown by the console,
a replay asked for on the console reaching the deadletter API, three dispatchers sharing the work,
a NATS node killed while events flow losing nothing, a collector restart leaving no gap in
the event keys, and `docker compose down -v` cleaning up without the .env passwords.

The tests run in this order and share one stack (conftest.py); each says what it saw in
the "compose" section at the end of the run.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any

import pytest
from pyVmomi import vim

from tests.compose.conftest import Report
from tests.compose.engine import Engine
from tests.compose.stack import NATS_NODES, PROJECT, SERVICES, SINK, Compose, Poster, wait_for
from vebus.config import NatsConfig, NatsTls
from vebus.runtime.connect import ConnectFailedError, connect_once

# the first test sets the stack up: cold, scripts/images takes minutes (debootstrap, builds)
pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

IMAGES = (
    "nats", "vcsim", "collector", "filter", "dispatcher", "deadletter", "functions", "console",
    "cli",
)  # fmt: skip
#: an image this size or larger has taken in something it should not have
MAX_IMAGE_MB = 250


def _no_restarts(stack: Compose, *, besides: tuple[str, ...] = ()) -> None:
    """No container was restarted by its restart policy since the last look: a service that
    crashed and came back is a failure here, not something to wait out (each crash is
    reported once, by the first test that sees it)."""
    now = stack.restarts()
    crashed = {
        name: count - stack.seen_restarts.get(name, 0)
        for name, count in now.items()
        if count > stack.seen_restarts.get(name, 0) and name not in besides
    }
    stack.seen_restarts = now
    if crashed:
        services = sorted({re.sub(rf"^{PROJECT}-(.+)-\d+$", r"\1", n) for n in crashed})
        raise AssertionError(
            f"restarted by Docker after a crash: {crashed}\n{stack.logs(*services, tail=300)}"
        )


def _delivered(stack: Compose, after: int, prefix: str) -> list[dict[str, Any]]:
    """The sink's accepted deliveries since record `after` whose message starts `prefix-`."""
    return [
        r
        for r in stack.records(after) or []
        if r["authorized"] and str(r.get("message") or "").startswith(f"{prefix}-")
    ]


def test_images_are_small_and_run_as_non_root(images: Engine, report: Report) -> None:
    engine = images
    sizes = []
    for name in IMAGES:
        (info,) = engine.inspect(f"vebus/{name}:0.1.0")
        config: Any = info["Config"]
        assert config["User"] == "10001", f"vebus/{name} runs as {config['User']!r}, not 10001"
        sizes.append((name, int(str(info["Size"])) / 1e6))
    (base,) = engine.inspect("vebus/base:bookworm")
    report.add(
        "image sizes (MB, each including the base image's "
        f"{int(str(base['Size'])) / 1e6:.0f}): " + ", ".join(f"{n} {mb:.0f}" for n, mb in sizes)
    )
    big = [(n, round(mb)) for n, mb in sizes if mb >= MAX_IMAGE_MB]
    assert not big, f"images of {MAX_IMAGE_MB} MB or more: {big}"
    # the filter's image carries no pyvmomi (its dependencies only); the collector's does
    out = engine.run(
        "run", "--rm", "--entrypoint", "python", "vebus/filter:0.1.0", "-c", "import pyVmomi"
    )
    assert out.returncode != 0, "the filter image has pyvmomi"
    assert "No module named 'pyVmomi'" in out.stderr, out.stderr
    out = engine.run(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "vebus/collector:0.1.0",
        "-c",
        "import pyVmomi, vebus_collector",
    )
    assert out.returncode == 0, out.stderr


def test_every_service_is_healthy_behind_the_env_logins(stack: Compose, report: Report) -> None:
    health = stack.health()
    expected = [f"{PROJECT}-{s}-1" for s in (*NATS_NODES, "vcsim", *SERVICES)]
    unhealthy = {n: health.get(n, "missing") for n in expected if health.get(n) != "healthy"}
    assert not unhealthy, f"not healthy: {unhealthy}\n{stack.logs(tail=100)}"
    _no_restarts(stack)
    # the processes run as uid 10001
    for name in (f"{PROJECT}-collector-1", f"{PROJECT}-nats-1-1", f"{PROJECT}-vcsim-1"):
        uid = stack.engine.docker("exec", name, "python3", "-c", "import os; print(os.getuid())")
        assert uid.strip() == "10001", f"{name} runs as uid {uid.strip()}"
    # NATS, the console and the simulator are published on 127.0.0.1 only
    for name, port in (
        (f"{PROJECT}-nats-1-1", "4222/tcp"),
        (f"{PROJECT}-console-1", "8090/tcp"),
        (f"{PROJECT}-vcsim-1", "8989/tcp"),
    ):
        (info,) = stack.engine.inspect(name)
        bindings: Any = info["HostConfig"]["PortBindings"][port]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], f"{name} {port}: {bindings}"
    # the simulator lets in the .env login only (so the collector, healthy, got it)
    with pytest.raises(vim.fault.InvalidLogin), stack.vsphere(user="user", password="pass"):
        pass
    with stack.vsphere() as content:
        assert content.about.apiType == "VirtualCenter"
    # NATS speaks TLS only, and only to clients with a certificate of the CA (the services
    # got theirs: they are healthy; the admin connections of these tests use one too)
    url = f"nats://127.0.0.1:{stack.nats_port}"
    for tls, says in ((None, "not trusted"), (NatsTls(ca_file=str(stack.tls.ca_file)), "cert")):
        with pytest.raises(ConnectFailedError, match=says):
            asyncio.run(connect_once(NatsConfig(url=url, tls=tls), url=url, user="admin",
                                     password=stack.passwords["admin"], name="test"))  # fmt: skip
    report.add(f"healthy: {', '.join(sorted(health))}; NATS refuses clients without TLS or "
               "without a certificate")  # fmt: skip


def test_a_powered_off_vm_reaches_the_sink(stack: Compose, report: Report) -> None:
    mark = len(stack.records(0) or [])
    with stack.vsphere() as content:
        vm = next(v for v in stack.vms(content) if v.runtime.powerState == "poweredOn")
        name = vm.name
        start = time.monotonic()
        stack.power_off(content, vm)

    def arrived() -> bool:
        return any(
            r["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0" and r["vm"] == name
            for r in stack.records(mark) or []
        )

    wait_for(
        f"VmPoweredOffEvent of {name} at the sink",
        arrived,
        60,
        details=lambda: (
            f"sink records: {(stack.records(mark) or [])[-10:]}\n"
            f"{stack.logs('collector', 'filter', 'dispatcher')}"
        ),
    )
    took = time.monotonic() - start
    refused = [r for r in stack.records(0) or [] if not r["authorized"]]
    assert not refused, f"deliveries without the sink token (sinks.env): {refused[:5]}"
    report.add(f"power-off of {name}: at the sink (bearer token from sinks.env) in {took:.1f}s")
    # the functions service ran the function compose declares: its reply names the VM
    wait_for(
        f"the powered-off function's reply for {name}",
        lambda: any(r.get("vm") == name for r in stack.replies("powered-off")),
        60,
        details=lambda: stack.logs("functions", "filter"),
    )
    report.add(f"power-off of {name}: the function replied in {time.monotonic() - start:.1f}s")
    # the console shows it: history search, as admin with the token `vebus console token`
    # made (its hash single-quoted in the env file, as env.example says)
    status, _, page = stack.console(f"/history?type=VmPoweredOffEvent&object={name}&from=1h")
    assert status == 200, page[:2000]
    assert name in page, f"{name} not in the console's history\n{stack.logs('console')}"


def test_the_console_signs_in_with_the_env_token_and_replays_through_the_deadletter_api(
    stack: Compose, report: Report
) -> None:
    status, _, _ = stack.console("/routes", token="not-the-token")
    assert status == 401
    status, _, page = stack.console("/routes")
    assert status == 200
    assert "vm-off-to-function" in page
    # a replay goes from the console to the deadletter service's API, over the compose
    # network, with VEBUS_DLQ_TOKEN: the console lands on the replay's page, not an error
    status, where, page = stack.console(
        "/deadletters/replay", form={"scope": "filter", "route": "no-such-route"}
    )
    assert status == 200, page[:2000]
    assert where.startswith("/replays/"), f"{where}\n{page[:2000]}\n{stack.logs('console')}"
    _no_restarts(stack)
    report.add(f"console: history shows the power-off; a replay reached the deadletter API "
               f"({where})")  # fmt: skip


def test_three_dispatchers_share_the_work_and_a_nats_kill_loses_nothing(
    stack: Compose, report: Report
) -> None:
    start = time.monotonic()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120", "--scale", "dispatcher=3")
    scaled = time.monotonic() - start
    dispatchers = stack.containers("dispatcher")
    assert len(dispatchers) == 3, [d["Name"] for d in dispatchers]
    by_ip = {stack.ip_of(d): str(d["Name"]).lstrip("/") for d in dispatchers}

    # kill the node that leads the most streams (the routes' stream on a tie); this test
    # reads NATS only through nats-1 and not while a node is down
    leaders = {s: stack.stream_leader(s) for s in ("VEBUS_ROUTES", "VEBUS_EVENTS")}
    led_by = Counter(n for n in leaders.values() if n)
    victim = max(led_by, key=lambda n: (led_by[n], n == leaders["VEBUS_ROUTES"]), default="nats-2")
    led = [s for s, n in leaders.items() if n == victim] or ["no stream"]
    container = f"{PROJECT}-{victim}-1"

    mark = len(stack.records(0) or [])
    poster = Poster(stack, "ledger", count=300, rate=20)
    t0 = time.monotonic()
    poster.start()
    time.sleep(3)
    stack.engine.docker("kill", container)
    killed_at = time.monotonic() - t0
    time.sleep(6)
    stack.engine.docker("start", container)
    back = wait_for(
        f"{container} healthy again",
        lambda: stack.health().get(container) == "healthy",
        90,
        details=lambda: stack.logs(victim),
    )
    poster.join(60)
    assert not poster.is_alive(), "the poster did not finish in time"

    sent = set(poster.sent)

    def all_delivered() -> bool:
        return sent <= {r["message"] for r in _delivered(stack, mark, "ledger")}

    try:
        wait_for("every ledger event at the sink", all_delivered, 120)
        time.sleep(3)  # late redeliveries count as duplicates
    except AssertionError:
        pass  # the ledger below says what is missing
    settled = time.monotonic() - t0
    got = _delivered(stack, mark, "ledger")
    counts = Counter(r["message"] for r in got)
    lost = sorted(sent - set(counts), key=lambda m: int(m.rsplit("-", 1)[1]))
    duplicates = sum(c - 1 for c in counts.values())
    per_replica = Counter(by_ip.get(r["peer"], r["peer"]) for r in stack.records(mark) or [])
    dead = stack.dead_letters("to-sink")
    ledger = (
        f"ledger nats-kill: sent {len(sent)}, delivered {len(counts)}, lost {len(lost)}, "
        f"duplicates {duplicates}, dead-lettered {dead}; {poster.count} posted at "
        f"{poster.rate:.0f}/s, {len(poster.errors)} refused by the simulator\n"
        f"  killed {victim} (leader of {', '.join(led)}) at +{killed_at:.1f}s, started again "
        f"6s later, healthy after {back:.1f}s more; settled at +{settled:.1f}s\n"
        f"  deliveries per dispatcher: "
        + ", ".join(f"{n} {per_replica.get(n, 0)}" for n in sorted(by_ip.values()))
        + f"; scale to 3 took {scaled:.1f}s"
    )
    report.add(ledger)
    assert not poster.errors, f"{ledger}\nthe simulator refused: {poster.errors[:5]}"
    assert not lost, (
        f"{ledger}\nLOST: {lost[:30]}\n"
        f"{stack.logs('collector', 'filter', 'dispatcher', victim, tail=120)}"
    )
    idle = [n for n in by_ip.values() if not per_replica.get(n)]
    assert not idle, f"{ledger}\ndispatchers that delivered nothing: {idle}"
    _no_restarts(stack, besides=(container,))


def test_a_collector_restart_leaves_no_gap_in_the_event_keys(
    stack: Compose, report: Report
) -> None:
    mark = len(stack.records(0) or [])
    poster = Poster(stack, "restart", count=100, rate=20)
    poster.start()
    time.sleep(1.5)
    start = time.monotonic()
    stack.compose("restart", "collector", timeout=120)
    restarted = time.monotonic() - start
    poster.join(60)
    assert not poster.is_alive(), "the poster did not finish in time"
    assert not poster.errors, poster.errors[:5]
    newest = stack.newest_key()

    def missing() -> list[int]:
        return sorted(set(range(1, newest + 1)) - set(stack.event_keys()))

    wait_for(
        f"event keys 1..{newest} in VEBUS_EVENTS",
        lambda: not missing(),
        90,
        details=lambda: f"missing keys: {missing()[:50]}\n{stack.logs('collector')}",
    )
    keys = stack.event_keys()
    sent = set(poster.sent)
    wait_for(
        "every restart event at the sink",
        lambda: sent <= {r["message"] for r in _delivered(stack, mark, "restart")},
        90,
        details=lambda: stack.logs("collector", "filter", "dispatcher"),
    )
    report.add(
        f"collector restart (docker compose restart collector, {restarted:.1f}s) with "
        f"{len(sent)} events posted around it: VEBUS_EVENTS holds keys 1..{newest}, no gap, "
        f"{len(keys) - len(set(keys))} stored twice; all {len(sent)} at the sink"
    )
    assert len(keys) == len(set(keys)), "a key stored twice in VEBUS_EVENTS"
    _no_restarts(stack)


def test_down_without_the_env_file_removes_everything(
    stack: Compose, engine: Engine, report: Report
) -> None:
    engine.docker("rm", "-f", SINK)
    # as a user without .env would: no passwords anywhere (the env file is not given)
    start = time.monotonic()
    stack.compose("-p", PROJECT, "down", "-v", "--timeout", "20", env_file=False, timeout=180)
    took = time.monotonic() - start
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        kind: engine.docker(kind, "ls", "-q", "--filter", label).split()
        for kind in ("container", "volume", "network")
    }
    left["container"] += engine.docker("ps", "-aq", "--filter", label).split()
    assert not any(left.values()), f"left behind by down -v: {left}"
    report.add(
        f"docker compose -p {PROJECT} down -v (no env file): everything removed in {took:.1f}s"
    )
