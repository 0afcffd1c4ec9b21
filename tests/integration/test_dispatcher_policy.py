"""Delivery policy: backoff, max_age (from when the event entered the route, less pauses),
and a route's rate held across dispatcher replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import itertools
import json
import logging
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tests.support.dispatcher import (
    dead_letters,
    event,
    eventually,
    inject,
    lower,
    one_dead_letter,
    prepare,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.consume import Ack, Nak
from vebus.bus.dlq import iter_dead_letters
from vebus.bus.streams import ensure_consumer
from vebus.config import Route, parse_config
from vebus.delivery.consumers import route_consumer_config
from vebus.delivery.ratelimit import RateLimiter, rate_bucket
from vebus.delivery.route import RouteDelivery
from vebus.errors import ErrorCode, RetryableDeliveryError
from vebus.names import ROUTES_STREAM, dispatcher_durable

pytestmark = pytest.mark.integration


def ce_id(sink: RecordingSink, i: int) -> str:
    return lower(sink.received[i].headers)["ce-id"]


# ------------------------------------------------------------------------------ backoff


async def test_the_delay_between_attempts_grows(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    sink.status = 503
    js = await start_dispatcher(
        stack, nc,
        [route("grow", sink.url, max_attempts=5, initial=0.2, multiplier=2, max_backoff=10,
               jitter=0)],
    )  # fmt: skip
    await inject(js, "grow", event(1))

    dl = await eventually(one_dead_letter(js, "grow"), "a dead letter", stack)
    assert (dl.attempts, dl.exhausted, dl.code) == (5, "max_attempts", "HTTP_5XX")
    gaps = [b - a for a, b in zip(sink.arrivals, sink.arrivals[1:], strict=False)]
    print("gaps between attempts:", [f"{g:.2f}" for g in gaps])
    assert len(gaps) == 4
    for want, got in zip((0.2, 0.4, 0.8, 1.6), gaps, strict=True):
        assert want * 0.9 <= got <= want + 1.0  # the nak delay, plus a loaded machine
    assert all(later > earlier * 1.4 for earlier, later in itertools.pairwise(gaps))


# ------------------------------------------------------------------------------ max_age


async def test_max_age_counts_from_entering_the_route_and_ends_in_the_dead_letters(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    sink.responder = lambda rec: 503 if lower(rec.headers)["ce-id"] == "failing" else 200
    max_age = 3.0
    routes = [route("aged", sink.url, max_attempts=50, initial=0.25, multiplier=1.5,
                    max_backoff=0.5, max_age=max_age)]  # fmt: skip
    js = await prepare(stack, nc, routes)
    await inject(js, "aged", event("stale"))  # waits in the route while no dispatcher runs
    await asyncio.sleep(max_age + 0.3)
    await asyncio.to_thread(stack.start, "dispatcher")
    # vCenter made this one years ago (a catch-up after an outage): it is not expired
    await inject(js, "aged", event("caught-up", time="2020-02-11T21:29:54.9052539Z"))
    t0 = time.monotonic()
    await inject(js, "aged", event("failing"))

    assert await sink.wait_for(lambda: "caught-up" in sink.accepted_ids()), stack.logs()

    async def both() -> list[Any] | None:
        found = await dead_letters(js, "aged")
        return found if len(found) == 2 else None

    found = {dl.event().id: dl for dl in await eventually(both, "two dead letters", stack)}  # type: ignore[union-attr]
    took = time.monotonic() - t0
    stale, failing = found["stale"], found["failing"]
    # never attempted: it was too old when the dispatcher first saw it
    assert (stale.exhausted, stale.attempts) == ("max_age", 0)
    assert "max_age" in stale.error
    assert all(lower(r.headers)["ce-id"] != "stale" for r in sink.received)
    # retried while young enough, then given up on for its age, not its attempts
    assert (failing.exhausted, failing.code, failing.status) == ("max_age", "HTTP_5XX", 503)
    assert 3 <= failing.attempts < 50
    assert len([r for r in sink.received if lower(r.headers)["ce-id"] == "failing"]) == (
        failing.attempts
    )
    assert max_age - 0.6 <= took <= max_age + 5, took
    await eventually(route_settled(js, "aged"), "the route emptied", stack)


class ListSink:
    """An in-process sink that takes everything."""

    kind = "list"

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        self.events.append(event)

    async def close(self) -> None:
        pass


async def _fetch_one(js: JetStreamContext, r: Route) -> Msg:
    await ensure_consumer(js, ROUTES_STREAM, route_consumer_config(r, dispatcher_durable(r.name)))
    psub = await js.pull_subscribe_bind(dispatcher_durable(r.name), ROUTES_STREAM)
    (msg,) = await psub.fetch(1, timeout=5)
    return msg


async def test_time_the_route_was_paused_does_not_count_toward_max_age(
    stack: Stack, nc: Client
) -> None:
    raw = route("paused", sink={"kind": "console"}, max_age=60)
    js = await prepare(stack, nc, [raw])
    r = parse_config({"routes": [raw]}, {}).routes[0]
    await inject(js, "paused", event("p1"))
    await inject(js, "paused", event("p2"))
    msg1, msg2 = await _fetch_one(js, r), await _fetch_one(js, r)
    later = lambda: time.time() + 100  # noqa: E731  (100s after it entered the route)
    seen: list[tuple[str, dt.datetime]] = []

    def paused(route_name: str, since: dt.datetime) -> float:
        seen.append((route_name, since))
        return 50.0

    sink = ListSink()
    # paused 50 of those 100 seconds: 50s old, within max_age
    assert (
        await RouteDelivery(js, r, sink, paused_seconds=paused, clock=later).handle(msg1) == Ack()
    )
    assert [e.id for e in sink.events] == ["p1"]
    assert seen[0][0] == "paused"
    assert abs(seen[0][1].timestamp() - msg1.metadata.timestamp.timestamp()) < 1e-6
    # never paused: 100s old, past max_age
    assert await RouteDelivery(js, r, sink, clock=later).handle(msg2) == Ack()
    assert [e.id for e in sink.events] == ["p1"]
    (dl,) = [d async for d in iter_dead_letters(js, route="paused")]
    assert (dl.exhausted, dl.attempts, dl.event().id) == ("max_age", 0, "p2")  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ rate


async def test_two_limiters_on_one_schedule_hand_out_evenly_spaced_slots(nc: Client) -> None:
    js = nc.jetstream()
    config = parse_config({}, {})
    kv = await rate_bucket(js, replicas=config.nats.replicas)
    rate = 50.0
    a, b = RateLimiter(kv, "shared", rate), RateLimiter(kv, "shared", rate)
    slots = await asyncio.gather(*(lim.reserve() for _ in range(60) for lim in (a, b)))
    slots.sort()
    gaps = [y - x for x, y in itertools.pairwise(slots)]
    assert min(gaps) >= 1 / rate - 1e-6  # never two sends closer than the interval
    assert slots[-1] - slots[0] == pytest.approx(119 / rate, abs=0.5)
    print(f"120 reservations, {a.conflicts + b.conflicts} lost races")


async def test_a_routes_rate_holds_across_two_dispatcher_replicas(
    stack: Stack, nc: Client, sink: RecordingSink, tmp_path: Path
) -> None:
    rate, count = 10.0, 40

    def routes(replica: str) -> list[dict[str, Any]]:
        return [route("paced", sink.url, headers={"X-Replica": replica}, rate=rate)]

    js = await prepare(stack, nc, routes("a"))
    other = Stack(tmp_path / "b", stack.nats_url)
    (tmp_path / "b").mkdir()
    other.write_config({"routes": routes("b")})
    try:
        await asyncio.gather(
            asyncio.to_thread(stack.start, "dispatcher"),
            asyncio.to_thread(other.start, "dispatcher"),
        )
        for n in range(count):
            await inject(js, "paced", event(n))
        assert await sink.wait_for(lambda: len(sink.accepted) >= count, timeout=60), (
            stack.logs() + other.logs()
        )
    finally:
        for p in other.procs.values():
            p.kill()
    times = sorted(sink.arrivals)
    took = times[-1] - times[0]
    per_second = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    replicas = {lower(r.headers)["x-replica"] for r in sink.received}
    print(f"{count} events at rate {rate}/s over 2 replicas: {took:.2f}s, "
          f"at most {per_second} in any second, sent by {sorted(replicas)}")  # fmt: skip
    assert replicas == {"a", "b"}  # both replicas delivered: the rate is the route's
    assert took >= (count - 1) / rate * 0.9
    assert per_second <= rate + 2
    assert sorted(sink.accepted_ids()) == sorted(str(n) for n in range(count))
    assert await dead_letters(js, "paced") == []
    assert json.loads(sink.received[0].body)["Key"] in range(count)


class _Payload:
    """An object only a failed attempt's frame refers to."""


class FailingSink:
    """A sink that fails every attempt, holding a payload in the raising frame."""

    kind = "failing"

    def __init__(self) -> None:
        self.payloads: list[weakref.ref[_Payload]] = []

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        payload = _Payload()  # a local of the frame the traceback holds
        self.payloads.append(weakref.ref(payload))
        raise RetryableDeliveryError("503 from the sink", code=ErrorCode.HTTP_5XX, status=503)

    async def close(self) -> None:
        pass


async def test_a_remembered_failure_keeps_none_of_the_attempts_frames(
    stack: Stack, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A message that fails here and is then delivered by another replica is never seen
    # here again: its remembered failure stays until REMEMBERED_FAILURES pushes it out.
    # Keeping the exception kept its traceback's frames (the message, the event, the
    # sink's response): the soak measured a dispatcher growing 6 MB an hour.
    raw = route("remember", sink={"kind": "console"}, max_attempts=5)
    js = await prepare(stack, nc, [raw])
    r = parse_config({"routes": [raw]}, {}).routes[0]
    await inject(js, "remember", event("m1"))
    msg = await _fetch_one(js, r)
    sink = FailingSink()
    # pytest keeps every log record, and a record keeps its arguments (the error): a
    # service's handlers format a record and drop it
    monkeypatch.setattr(logging.getLogger("vebus.delivery.route"), "disabled", True)
    delivery = RouteDelivery(js, r, sink)
    assert isinstance(await delivery.handle(msg), Nak)
    gc.collect()
    assert sink.payloads
    assert all(ref() is None for ref in sink.payloads)
    del delivery  # (alive until here: it remembers the failure)
