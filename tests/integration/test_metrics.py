"""Every service serves Prometheus metrics on its health port, and they move as events flow:
a VM powered off in vcsim is published by the collector, routed by the filter to two
routes, delivered on one and dead-lettered on the other (its sink refuses it)."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Vcsim
from tests.support.sink import RecordingSink
from tests.support.stack import SERVICES, Stack
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def scrape_all(stack: Stack) -> dict[str, Samples]:
    return {name: await asyncio.to_thread(_scrape, stack.health[name]) for name in SERVICES}


def _config(vcsim: Vcsim, sink: RecordingSink) -> dict[str, Any]:
    match = {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]}
    return {
        "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "u", "password": "p"}],
        "routes": [
            {"name": "ok", "match": match, "sink": {"kind": "webhook", "url": sink.url}},
            {
                "name": "refused",
                "match": match,
                "sink": {"kind": "webhook", "url": sink.url.replace("/events", "/refuse")},
                "delivery": {"max_attempts": 2, "backoff": {"initial": "100ms"}},
            },
        ],
    }


async def test_counters_move_as_events_flow(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEBUS_METRICS_POLL", "0.5")
    sink.responder = lambda r: 503 if r.path == "/refuse" else 200
    stack.write_config(_config(vcsim, sink))
    await asyncio.to_thread(stack.start)
    before = await scrape_all(stack)
    for name, samples in before.items():
        assert value(samples, "vebus_info", service=name) == 1

    def power_off() -> None:
        vs = VSphere(vcsim.url)
        try:
            vm = next(v for v in vs.vms() if v.runtime.powerState == "poweredOn")
            vs.power_off(vm)
        finally:
            vs.close()

    await asyncio.to_thread(power_off)
    assert await sink.wait_for(
        lambda: (
            sum(r.path == "/events" for r in sink.accepted) == 1
            and sum(r.path == "/refuse" for r in sink.received) == 2
        ),
        timeout=60,
    ), stack.logs()

    d = "dispatcher"

    def delta(service: str, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(before[service], name, **labels)

    def polled(after: dict[str, Samples]) -> bool:
        """The gauges polled every VEBUS_METRICS_POLL have caught up: the deadletter service
        saw the dead letter stored, the dispatcher and the filter polled their consumers (a
        missing gauge would read as 0 below)."""
        dispatcher_polled = all(
            ("vebus_consumer_pending", frozenset({("stream", "VEBUS_ROUTES"),
             ("consumer", f"vebus-dispatch-{route}")})) in after["dispatcher"]
            for route in ("ok", "refused")
        )  # fmt: skip
        filter_polled = ("vebus_consumer_ack_pending", frozenset({("stream", "VEBUS_EVENTS"),
                         ("consumer", "vebus-filter")})) in after["filter"]  # fmt: skip
        dlq = value(after["deadletter"], "vebus_stream_messages", stream="VEBUS_DLQ")
        return dispatcher_polled and filter_polled and dlq >= 1

    deadline = asyncio.get_running_loop().time() + 30
    while not polled(after := await scrape_all(stack)):
        assert asyncio.get_running_loop().time() < deadline, (after["deadletter"], after[d])
        await asyncio.sleep(0.5)

    # collector: the event stored, the vCenter connected, this replica holds its lease
    published = "vebus_events_published_total"
    assert delta("collector", published, stream="VEBUS_EVENTS", source="vc1") >= 1
    assert value(after["collector"], "vebus_vcenter_connected", vcenter="vc1") == 1
    assert value(after["collector"], "vebus_vcenter_lease_held", vcenter="vc1") == 1
    assert value(after["collector"], "vebus_vcenter_state", vcenter="vc1", state="tailing") == 1
    assert value(after["collector"], "vebus_vcenter_last_event_key", vcenter="vc1") > 0
    # filter: received, acked, one copy per route, event age observed
    received = "vebus_events_received_total"
    assert delta("filter", received, consumer="vebus-filter") >= 1
    assert (
        delta("filter", "vebus_events_handled_total", consumer="vebus-filter", outcome="ack") >= 1
    )
    assert delta("filter", published, stream="VEBUS_ROUTES", route="ok") == 1
    assert delta("filter", published, stream="VEBUS_ROUTES", route="refused") == 1
    assert delta("filter", "vebus_event_age_seconds_count", consumer="vebus-filter") >= 1
    # dispatcher: delivered on one route, two failed attempts and a dead letter on the other
    assert delta(d, "vebus_events_delivered_total", route="ok", sink="webhook") == 1
    attempts = "vebus_delivery_attempts_total"
    assert delta(d, attempts, route="ok", outcome="delivered") == 1
    assert delta(d, attempts, route="refused", sink="webhook", outcome="retryable") == 2
    assert delta(d, "vebus_events_failed_total", route="refused", code="HTTP_5XX") == 1
    assert delta(d, published, stream="VEBUS_DLQ", route="refused") == 1
    assert delta(d, "vebus_sink_call_seconds_count", route="refused") == 2
    assert delta(d, received, consumer="vebus-dispatch-refused") == 2
    assert delta(d, "vebus_event_age_seconds_count", consumer="delivered", route="ok") == 1
    assert delta(d, "vebus_consumer_wait_seconds_count", route="ok") == 1
    # backlog gauges of each consumer (polled), all caught up
    for consumer in ("vebus-dispatch-ok", "vebus-dispatch-refused"):
        assert value(after[d], "vebus_consumer_pending", consumer=consumer) == 0
    assert value(after["filter"], "vebus_consumer_ack_pending", consumer="vebus-filter") == 0
    # deadletter: the depth of VEBUS_DLQ
    assert value(after["deadletter"], "vebus_stream_messages", stream="VEBUS_DLQ") == 1
    assert set((await asyncio.to_thread(stack.stop_all)).values()) == {0}
