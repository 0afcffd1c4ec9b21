"""A route reaches its limit in VEBUS_ROUTES (`streams.route_max_msgs`) while its sink is
down: the other route taking the same events keeps delivering, the full route's further
copies become ROUTE_FULL dead letters, every event the filter acknowledged is either on
the route or a dead letter, and after the repair the backlog drains and the dead letters
replay to delivery."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import ROUTE_MAX_MSGS, Bus, MakeLedger, source
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

FULL, OTHER = "full", "full-ok"

#: (events over the limit, events/s): the other route must keep up with the rate, or it
#: fills too (its dispatchers deliver a few hundred a second on a small machine)
FORMS = [
    pytest.param((200, 600.0), id="short"),
    pytest.param((2000, 150.0), id="long", marks=pytest.mark.slow),
]


async def stored_on(js: JetStreamContext, route: str) -> int:
    subject = names.route_subject(route)
    info = await js.stream_info(names.ROUTES_STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def filter_idle(js: JetStreamContext) -> bool:
    info = await js.consumer_info(names.EVENTS_STREAM, names.FILTER_DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.mark.parametrize("form", FORMS)
async def test_a_full_route_dead_letters_its_copies_and_the_others_go_on(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger, form: tuple[int, float]
) -> None:
    overflow, rate = form
    sink, other = bus.sink(FULL), bus.sink(OTHER)
    total = ROUTE_MAX_MSGS + overflow
    led = ledger(f"route full ({ROUTE_MAX_MSGS} stored + {overflow} over)", sink)
    led_other = ledger("route full: the other route", other)
    led.max_ack_pending = led_other.max_ack_pending = await bus.max_ack_pending(js, FULL, OTHER)
    assert await stored_on(js, FULL) == 0
    before = {d.seq for d in await dead_letters(js, FULL)}

    bus.hub.down(sink)
    fault = led.fault(f"sink of {FULL} down until its route was full")
    try:
        producer = Producer(
            js, led, source=source(FULL), prefix=f"full{time.time_ns()}", count=total, rate=rate
        )
        await producer.run()
        led_other.sent = list(led.sent)
        # the other route delivers everything while this one is full
        assert await wait_until(lambda: set(led.sent) <= set(other.accepted_ids()), 90)
        full: list[DeadLetterRecord] = []

        async def counted() -> bool:
            full[:] = [d for d in await dead_letters(js, FULL) if d.seq not in before]
            return len(full) >= overflow and await filter_idle(js)

        await eventually(counted, 60)
        stored = await stored_on(js, FULL)
        # nothing acknowledged upstream that was not stored: on the route, or a dead letter
        assert stored == ROUTE_MAX_MSGS, stored
        assert len(full) == overflow, f"{len(full)} ROUTE_FULL dead letters, expected {overflow}"
        assert {d.code for d in full} == {"ROUTE_FULL"}
        assert len({d.event_id for d in full}) == overflow
        assert await filter_idle(js)
        led.take_dead_letters(full)
    finally:
        bus.hub.up(sink)
    # the backlog drains, then the dead letters are replayed to the route
    assert await wait_until(lambda: len(set(sink.accepted_ids())) >= ROUTE_MAX_MSGS, 90)
    replay = await asyncio.to_thread(
        bus.cli, "dlq", "replay", "--route", FULL, "--code", "ROUTE_FULL", "--rate", "0", "--yes"
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"replayed {overflow} dead letter(s)" in replay.stdout, replay.stdout
    assert await wait_until(lambda: set(led.sent) <= set(sink.accepted_ids()), 60)
    fault.recovered()
    led.note(f"stored on the route when full: {stored}; ROUTE_FULL dead letters: {len(full)}")
    await settle(led, js, sink, FULL, timeout=30)
    await settle(led_other, js, other, OTHER, timeout=30)
    assert len(led.delivered) == total
    assert led.dead_codes() == {"ROUTE_FULL": overflow}
    led.check(dead_letters=True)
    led_other.check()
