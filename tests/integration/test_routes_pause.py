"""`vebus routes pause` / `resume` against a running dispatcher: events wait, then all arrive.

The route's max_age is 3 s and the events wait paused for longer than that (across a
dispatcher restart): paused time does not count toward max_age, so none is dead-lettered.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.support.dispatcher import (
    dead_letters,
    event,
    eventually,
    inject,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import RecordingSink
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"


async def vebus(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(VEBUS), "routes", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def test_a_paused_route_keeps_its_events_past_max_age_and_delivers_them_on_resume(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    js = await start_dispatcher(
        stack, nc, [route("maint", sink.url, max_age="3s"), route("other", sink.url)]
    )
    cfg = ("--config", str(stack.config_path))

    paused = await vebus("pause", "maint", *cfg, "--timeout", "20")
    assert paused.returncode == 0, f"{paused.stdout}\n{paused.stderr}\n{stack.logs()}"
    assert "route maint paused" in paused.stdout
    assert "paused: maint" in paused.stdout, paused.stdout  # the dispatcher's own report

    for n in range(5):
        await inject(js, "maint", event(f"m{n}"))
    await inject(js, "other", event("o1"))  # other routes go on
    assert await sink.wait_for(lambda: "o1" in sink.accepted_ids(), timeout=30), stack.logs()
    await asyncio.sleep(2.0)
    # a restarted dispatcher still finds the route paused (the pause is in NATS KV)
    await asyncio.to_thread(stack.stop, "dispatcher")
    await asyncio.to_thread(stack.restart, "dispatcher")
    await asyncio.sleep(2.5)  # the events have now waited longer than max_age
    assert [i for i in sink.accepted_ids() if i.startswith("m")] == []
    listing = await vebus("list", *cfg)
    assert "PAUSED since" in listing.stdout, listing.stdout

    again = await vebus("pause", "maint", *cfg)
    assert again.returncode == 0, again.stderr
    assert "already paused" in again.stdout, again.stdout

    resumed = await vebus("resume", "maint", *cfg, "--timeout", "20")
    assert resumed.returncode == 0, f"{resumed.stdout}\n{resumed.stderr}\n{stack.logs()}"
    want = {f"m{n}" for n in range(5)}
    assert await sink.wait_for(lambda: want <= set(sink.accepted_ids()), timeout=30), (
        f"{sink.accepted_ids()}\n{stack.logs()}"
    )
    await eventually(route_settled(js, "maint"), "route maint settled", stack)
    assert await dead_letters(js, "maint") == []


async def test_pausing_an_unknown_route_is_refused(stack: Stack, nc: Client) -> None:
    stack.write_config({"routes": [route("known", "http://127.0.0.1:9/")]})
    result = await vebus("pause", "nope", "--config", str(stack.config_path))
    assert result.returncode == 2, result
    assert "no route named 'nope'" in result.stderr
    assert "(routes: known)" in result.stderr
