"""A sink that goes away and comes back, and one that answers 500 for ever.

Down for a while (10s here, a minute in the long form) within the route's retry policy:
the backlog drains once it is back and nothing is dead-lettered. Failing for ever: every
event is dead-lettered after max_attempts, and `vebus dlq replay --all --yes` after the
repair delivers each one."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import ROUTES, Bus, MakeLedger, source
from tests.support.ledger import (
    DeadLetterRecord,
    Producer,
    dead_letters,
    eventually,
    settle,
    wait_until,
)
from vebus import names

pytestmark = pytest.mark.chaos


@dataclass(frozen=True)
class Outage:
    events: int
    rate: float
    down_for: float


OUTAGES = [
    pytest.param(Outage(events=360, rate=30, down_for=10), id="short"),
    pytest.param(Outage(events=1050, rate=15, down_for=60), id="long", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("form", OUTAGES)
async def test_sink_down_then_back_drains_the_backlog(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: Outage
) -> None:
    route = "outage"
    sink = bus.sink(route)
    led = ledger(f"sink down {form.down_for:.0f}s", sink)
    led.max_ack_pending = await bus.max_ack_pending(js, route)
    producer = Producer(
        js, led, source=source(route), prefix=f"out{time.time_ns()}", count=form.events,
        rate=form.rate,
    )  # fmt: skip
    producing = asyncio.create_task(producer.run())
    await asyncio.sleep(1)
    bus.hub.down(sink)
    fault = led.fault(f"sink of {route} down for {form.down_for:.0f}s")
    try:
        await asyncio.sleep(form.down_for)
        refused_meanwhile = len(set(led.sent) - set(sink.accepted_ids()))
    finally:
        bus.hub.up(sink)
    back = time.monotonic()
    await producing
    drained = await wait_until(lambda: set(led.sent) <= set(sink.accepted_ids()), 60)
    fault.recovered_after = time.monotonic() - back  # backlog drain time after the sink returned
    led.note(f"backlog when the sink came back: {refused_meanwhile} events; drained: {drained}")
    await settle(led, js, sink, route, timeout=30)
    assert refused_meanwhile > form.rate * form.down_for * 0.5, led.report()
    led.check()  # no dead letters: the outage was within the route's policy


FOREVER = [
    pytest.param(100, id="short"),
    pytest.param(1000, id="long", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("events", FOREVER)
async def test_sink_failing_forever_dead_letters_then_replay_delivers(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, events: int
) -> None:
    route = "fail500"
    max_attempts = ROUTES[route]["delivery"]["max_attempts"]
    sink = bus.sink(route)
    await js.purge_stream(names.DLQ_STREAM)  # `--all` below must replay only ours
    led = ledger(f"sink answers 500 for ever ({events} events)", sink)
    led.max_ack_pending = await bus.max_ack_pending(js, route)
    sink.status = 500
    try:
        producer = Producer(
            js, led, source=source(route), prefix=f"f500-{time.time_ns()}", count=events,
            rate=500,
        )  # fmt: skip
        await producer.run()
        letters: list[DeadLetterRecord] = []

        async def all_dead() -> bool:
            letters[:] = await dead_letters(js, route)
            return len(letters) >= events

        await eventually(all_dead, 60)
        assert len(letters) == events, f"{len(letters)} dead letters of {events}"
        assert {d.event_id for d in letters} == set(led.sent)
        assert {(d.code, d.attempts) for d in letters} == {("HTTP_5XX", max_attempts)}
        ours = set(led.sent)
        tries = Counter(i for r in sink.received if (i := r.headers.get("ce-id")) in ours)
        assert set(tries.values()) == {max_attempts}, "each event tried exactly max_attempts"
        assert not ours & set(sink.accepted_ids())
    finally:
        sink.status = 200  # the repair
    led.take_dead_letters(letters)
    fault = led.fault("sink answered 500 until repaired, then `vebus dlq replay --all --yes`")
    replay = await asyncio.to_thread(bus.cli, "dlq", "replay", "--all", "--yes")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"replayed {events} dead letter(s)" in replay.stdout, replay.stdout
    assert await wait_until(lambda: set(led.sent) <= set(sink.accepted_ids()), 60)
    fault.recovered()
    await settle(led, js, sink, route, timeout=30)
    assert await dead_letters(js, route) == [], "replayed dead letters are deleted"
    led.note(f"dead letters replayed: {len(letters)} (HTTP_5XX after {max_attempts} attempts)")
    # every event was dead-lettered once, and delivered once after the replay
    assert led.dead_lettered == events, led.report()
    assert len(led.delivered) == events, led.report()
    led.check(dead_letters=True)
