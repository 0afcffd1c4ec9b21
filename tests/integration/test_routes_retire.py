"""A removed route's consumer is deleted once empty, kept while events wait in it, and a
route whose consumer vanished under a running dispatcher creates it again.

Real processes: nats-server, the dispatcher service, the `vebus routes` command; events are
put on the routes the way the filter does, and delivered to a recording HTTP sink.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.dispatcher import event, eventually, inject, route, start_dispatcher
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from vebus.names import ROUTES_STREAM, dispatcher_durable, route_subject

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"


async def routes(stack: Stack, *args: str, status: int = 0) -> None:
    """Run `vebus routes ARGS --config ...` in a thread (the sink in this loop keeps
    answering) and require its exit status to be `status`."""
    result = await asyncio.to_thread(
        subprocess.run,
        [str(VEBUS), "routes", *args, "--config", str(stack.config_path), "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == status, f"{result.stdout}\n{result.stderr}\n{stack.logs()}"


async def apply(
    stack: Stack, tmp_path: Path, route_set: list[dict[str, Any]], status: int = 0
) -> None:
    path = tmp_path / f"routes-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump({"routes": route_set}, sort_keys=False))
    await routes(stack, "apply", str(path), status=status)


def hook(name: str, sink: RecordingSink) -> dict[str, Any]:
    return route(name, f"http://127.0.0.1:{sink.port}/{name}")


async def exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.consumer_info(ROUTES_STREAM, dispatcher_durable(name))
    except NotFoundError:
        return False
    return True


async def delivered(sink: RecordingSink, ids: set[str], stack: Stack) -> None:
    ok = await sink.wait_for(lambda: ids <= set(sink.accepted_ids()), timeout=20)
    assert ok, f"not delivered: {sorted(ids - set(sink.accepted_ids()))}\n{stack.logs()}"


def log(stack: Stack) -> str:
    return stack.procs["dispatcher"].output()


async def test_a_removed_route_loses_its_empty_consumer_and_gets_a_new_one_when_it_comes_back(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    both = [hook("a", sink), hook("b", sink)]
    js = await start_dispatcher(stack, nc, both)
    await apply(stack, tmp_path, both)
    for r in ("a", "b"):
        await inject(js, r, event(f"{r}1"))
    await delivered(sink, {"a1", "b1"}, stack)

    await apply(stack, tmp_path, [hook("a", sink)])

    async def b_gone() -> bool | None:
        return True if not await exists(js, "b") else None

    await eventually(b_gone, "route b's consumer deleted", stack, timeout=20)
    assert await exists(js, "a")
    assert "removed route b: deleted its empty consumer vebus-dispatch-b" in log(stack)
    await inject(js, "a", event("a2"))  # a is untouched
    await delivered(sink, {"a2"}, stack)

    await inject(js, "b", event("b2"))  # no consumer now: it waits in the work queue
    await apply(stack, tmp_path, both)
    await inject(js, "b", event("b3"))
    await delivered(sink, {"b2", "b3"}, stack)


async def test_a_consumer_deleted_under_a_running_route_is_created_again(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    js = await start_dispatcher(stack, nc, [hook("r", sink)])
    await inject(js, "r", event("r1"))
    await delivered(sink, {"r1"}, stack)
    await asyncio.sleep(0.5)  # idle: its long-poll pull request waits on the consumer
    await js.delete_consumer(ROUTES_STREAM, dispatcher_durable("r"))  # `nats consumer rm`
    for n in range(2, 6):
        await inject(js, "r", event(f"r{n}"))
    await delivered(sink, {f"r{n}" for n in range(2, 6)}, stack)
    assert "route r: its consumer vebus-dispatch-r was deleted while the route runs: " \
        "created it again" in log(stack), log(stack)  # fmt: skip
    assert await exists(js, "r")


async def test_a_removed_route_with_events_waiting_keeps_its_consumer_and_its_events(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    # paused, so the events cannot drain (a sink that is down would take DRAIN_MAX, 60 s)
    both = [hook("a", sink), hook("p", sink)]
    js = await start_dispatcher(stack, nc, both)
    await apply(stack, tmp_path, both)
    await routes(stack, "pause", "p")
    for n in range(3):
        await inject(js, "p", event(f"p{n}"))

    await apply(stack, tmp_path, [hook("a", sink)])

    warning = "removed route p was paused and 3 event(s) still wait in its consumer"

    async def warned() -> bool | None:
        return True if warning in log(stack) else None

    await eventually(warned, "the warning about route p", stack, timeout=20)
    info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable("p"))
    assert info.num_pending == 3
    stored = await js.stream_info(ROUTES_STREAM, subjects_filter=route_subject("p"))
    assert stored.state.subjects == {route_subject("p"): 3}
    assert sink.accepted_ids() == []

    await apply(stack, tmp_path, both)  # it comes back: what waited is delivered
    await routes(stack, "resume", "p")
    await delivered(sink, {"p0", "p1", "p2"}, stack)


async def test_a_route_back_in_the_stored_set_keeps_its_consumer_even_where_it_cannot_run(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    # b's sink fails until `up`, so b's drain lasts until the new set below is stored
    up = asyncio.Event()
    sink.responder = lambda rec: 200 if rec.path != "/b" or up.is_set() else 503
    b = route("b", f"http://127.0.0.1:{sink.port}/b", max_attempts=50)
    js = await start_dispatcher(stack, nc, [hook("a", sink), b])
    await apply(stack, tmp_path, [hook("a", sink), b])
    await inject(js, "b", event("b1"))
    await sink.wait_for(lambda: any(r.path == "/b" for r in sink.received), timeout=20)

    await apply(stack, tmp_path, [hook("a", sink)])  # b drains, retrying b1
    # b is back, in a form this dispatcher cannot run (another replica may): stored, not
    # started here, so what decides is the stored set re-read when the drain ends
    elsewhere = route("b", "${VEBUS_TEST_NOT_SET}", max_attempts=50)
    await apply(stack, tmp_path, [hook("a", sink), elsewhere], status=1)
    up.set()
    await delivered(sink, {"b1"}, stack)

    kept = "removed route b is in the route set again: consumer vebus-dispatch-b kept"

    async def retired() -> bool | None:
        return True if kept in log(stack) else None

    await eventually(retired, "route b's drain ended", stack, timeout=20)
    assert await exists(js, "b"), log(stack)
    assert "deleted its empty consumer" not in log(stack)


async def test_a_route_removed_while_no_dispatcher_ran_loses_its_empty_consumer_at_the_next_start(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    both = [hook("a", sink), hook("b", sink), hook("w", sink)]
    js = await start_dispatcher(stack, nc, both)
    await apply(stack, tmp_path, both)
    for r in ("a", "b"):
        await inject(js, r, event(f"{r}1"))
    await delivered(sink, {"a1", "b1"}, stack)
    assert await asyncio.to_thread(stack.stop, "dispatcher") == 0

    await inject(js, "w", event("w1"))  # w is removed with an event still waiting in it
    await apply(stack, tmp_path, [hook("a", sink)])  # no dispatcher runs to drain b and w
    assert await exists(js, "b")

    await asyncio.to_thread(stack.start, "dispatcher")

    async def b_gone() -> bool | None:
        return True if not await exists(js, "b") else None

    await eventually(b_gone, "route b's consumer deleted at start", stack, timeout=20)
    warning = "removed route w was removed while no dispatcher ran and 1 event(s) still wait"

    async def warned() -> bool | None:
        return True if warning in log(stack) else None

    await eventually(warned, "the warning about route w", stack, timeout=20)
    assert await exists(js, "a")
    assert await exists(js, "w"), "an event waits in it: kept"
    await inject(js, "a", event("a2"))
    await delivered(sink, {"a2"}, stack)
