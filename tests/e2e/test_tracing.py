"""One trace per event across the services, JSON logs that name the failing event, and no
secret in any log: the four services run as processes, export their spans over OTLP/HTTP
to a real receiver on loopback, and a VM is powered off in vcsim."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vcsim
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.e2e

VEBUS = str(Path(sys.executable).parent / "vebus")

VC_PASSWORD = "vc-Pa55w0rd-7f3e9b"
SINK_TOKEN = "tok-5ecret-41c2d8a0e6"
URL_SECRET = "sig-9d1b7c55e0aa"


@pytest.fixture
async def otlp() -> Any:
    receiver = await OtlpReceiver().start()
    yield receiver
    await receiver.stop()


def _config(vcsim: Vcsim, sink: RecordingSink) -> dict[str, Any]:
    match = {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]}
    return {
        "vcenters": [
            {"name": "vc1", "url": vcsim.url, "username": "ops", "password": "${VC_PASSWORD}"}
        ],
        "routes": [
            {
                "name": "vm-off",
                "match": match,
                "sink": {
                    "kind": "webhook",
                    "url": sink.url,
                    "auth": {"kind": "bearer", "token": "${SINK_TOKEN}"},
                },
            },
            {  # the sink refuses this one: attempts fail, then a dead letter
                "name": "vm-off-refused",
                "match": match,
                "sink": {  # a signature in the URL (a secret too), read from the environment
                    "kind": "webhook",
                    "url": sink.url.replace("/events", "/refuse/${URL_SECRET}"),
                },
                "delivery": {"max_attempts": 2, "backoff": {"initial": "100ms"}},
            },
        ],
    }


async def _power_off_one_vm(vcsim: Vcsim) -> str:
    def run() -> str:
        vs = VSphere(vcsim.url)
        try:
            vm = next(v for v in vs.vms() if v.runtime.powerState == "poweredOn")
            vs.power_off(vm)
            return str(vm.name)
        finally:
            vs.close()

    return await asyncio.to_thread(run)


def _one(spans: list[ReceivedSpan], service: str, kind: str, **attrs: Any) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.service == service
        and s.kind == kind
        and all(s.attributes.get(k) == v for k, v in attrs.items())
    ]
    assert len(found) == 1, (service, kind, attrs, spans)
    return found[0]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_one_trace_per_event_from_vcenter_to_the_sink(
    stack: Stack,
    vcsim: Vcsim,
    sink: RecordingSink,
    otlp: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    monkeypatch.setenv("VEBUS_LOG_FORMAT", "json")
    monkeypatch.setenv("VC_PASSWORD", VC_PASSWORD)
    monkeypatch.setenv("SINK_TOKEN", SINK_TOKEN)
    monkeypatch.setenv("URL_SECRET", URL_SECRET)
    sink.responder = lambda r: 503 if r.path.startswith("/refuse") else 200
    stack.write_config(_config(vcsim, sink))
    await asyncio.to_thread(stack.start)
    vm = await _power_off_one_vm(vcsim)

    def delivered() -> list[Any]:
        return [r for r in sink.accepted if r.path == "/events"]

    assert await sink.wait_for(lambda: len(delivered()) == 1, timeout=60), stack.logs()
    req = delivered()[0]
    assert json.loads(req.body)["Vm"]["Name"] == vm
    assert req.headers["Authorization"] == f"Bearer {SINK_TOKEN}"  # the token was used
    # the HTTP request carries the dispatcher's span (W3C header) and the event its creation
    # context (the CloudEvents distributed-tracing extension, binary mode: ce-traceparent)
    version, trace_id, client_span_id, flags = req.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    assert req.headers["ce-traceparent"].split("-")[1] == trace_id

    def complete() -> bool:
        names = {(s.service, s.kind) for s in otlp.traces().get(trace_id, [])}
        return {
            ("vebus-collector", "PRODUCER"),
            ("vebus-filter", "CONSUMER"),
            ("vebus-dispatcher", "CONSUMER"),
            ("vebus-dispatcher", "CLIENT"),
        } <= names

    assert await otlp.wait_for(complete, timeout=30), otlp.spans
    spans = otlp.traces()[trace_id]
    produced = _one(spans, "vebus-collector", "PRODUCER")
    filtered = _one(spans, "vebus-filter", "CONSUMER")
    routed = _one(spans, "vebus-filter", "PRODUCER", **{"vebus.route": "vm-off"})
    consumed = _one(spans, "vebus-dispatcher", "CONSUMER", **{"vebus.route": "vm-off"})
    client = _one(spans, "vebus-dispatcher", "CLIENT", **{"vebus.route": "vm-off"})
    # parent-child, hop by hop, into the request the sink received
    assert produced.parent_id == ""  # the collector starts the trace
    assert filtered.parent_id == produced.span_id
    assert routed.parent_id == filtered.span_id
    assert consumed.parent_id == routed.span_id
    assert client.parent_id == consumed.span_id
    assert client_span_id == client.span_id
    assert req.headers["ce-traceparent"].split("-")[2] == produced.span_id
    # messaging semantic conventions
    assert produced.attributes["messaging.system"] == "nats"
    assert produced.attributes["messaging.destination.name"].startswith("vebus.events.vc1.")
    assert produced.attributes["messaging.message.id"].startswith("vc1:")
    assert produced.attributes["cloudevents.event_id"] == req.headers["ce-id"]
    assert filtered.attributes["messaging.consumer.group.name"] == "vebus-filter"
    assert routed.attributes["messaging.destination.name"] == "vebus.routes.vm-off"
    assert consumed.attributes["messaging.destination.name"] == "vebus.routes.vm-off"
    assert client.attributes["vebus.outcome"] == "delivered"
    # the other route failed twice: its spans are in the same trace, marked as errors
    assert await otlp.wait_for(
        lambda: len([s for s in otlp.traces()[trace_id] if s.kind == "CLIENT"]) >= 3, timeout=30
    ), otlp.spans
    refused = [
        s for s in otlp.traces()[trace_id] if s.kind == "CLIENT" and s.span_id != client.span_id
    ]
    assert {s.attributes["vebus.route"] for s in refused} == {"vm-off-refused"}
    assert all(s.status == 2 for s in refused)  # STATUS_CODE_ERROR

    assert await sink.wait_for(
        lambda: len([r for r in sink.received if r.path.startswith("/refuse")]) >= 2, timeout=30
    )

    # the dead letter is stored under the last attempt's span ...
    def in_trace(kind: str, subject: str) -> list[ReceivedSpan]:
        return [
            s
            for s in otlp.traces()[trace_id]
            if s.kind == kind and s.attributes.get("messaging.destination.name") == subject
        ]

    assert await otlp.wait_for(lambda: in_trace("PRODUCER", "vebus.dlq.vm-off-refused"), 30)
    (stored,) = in_trace("PRODUCER", "vebus.dlq.vm-off-refused")
    assert stored.service == "vebus-dispatcher"
    attempts = in_trace("CONSUMER", "vebus.routes.vm-off-refused")
    assert stored.parent_id in {s.span_id for s in attempts}
    # ... and a replay continues the same trace from it, to the sink
    sink.responder = None
    replay = await asyncio.to_thread(
        subprocess.run,
        [VEBUS, "dlq", "replay", "--route", "vm-off-refused", "--yes",
         "--config", str(stack.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert await sink.wait_for(
        lambda: any(r.path.startswith("/refuse") for r in sink.accepted), timeout=30
    ), stack.logs()
    (again,) = [r for r in sink.accepted if r.path.startswith("/refuse")]
    assert again.headers["traceparent"].split("-")[1] == trace_id
    assert again.headers["ce-traceparent"] == req.headers["ce-traceparent"]  # creation context
    assert await otlp.wait_for(
        lambda: any(s.parent_id == stored.span_id
                    for s in in_trace("CONSUMER", "vebus.routes.vm-off-refused")), 30
    ), otlp.traces()[trace_id]  # fmt: skip
    assert set((await asyncio.to_thread(stack.stop_all)).values()) == {0}

    # JSON logs: the failure line names the route, the sink, the event and the trace
    logs = {name: proc.output() for name, proc in stack.procs.items()}
    lines = {name: _json_lines(text) for name, text in logs.items()}
    assert all(lines.values()), logs
    failures = [
        line
        for line in lines["dispatcher"]
        if line["level"] == "WARNING" and "attempt" in line["message"]
    ]
    assert failures, logs["dispatcher"]
    for line in failures:
        assert line["route"] == "vm-off-refused"
        assert line["sink"] == "webhook"
        assert line["event_id"] == req.headers["ce-id"]
        assert line["trace_id"] == trace_id
        assert line["service"] == "dispatcher"
    # secrets: neither the vCenter password, the sink token nor the URL's signature
    # appears in any log (the signature did reach the sink: the URL was used)
    assert any(r.path == f"/refuse/{URL_SECRET}" for r in sink.received)
    for name, text in logs.items():
        for secret in (VC_PASSWORD, SINK_TOKEN, URL_SECRET):
            assert secret not in text, (name, secret)
    assert len(otlp.spans) >= 6
