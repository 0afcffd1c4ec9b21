"""The eventbridge sink against moto's server: events arrive on the bus (a rule sends them
to an SQS queue that the test reads), in batches of up to 10 entries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from nats.aio.client import Client

from tests.support.dispatcher import event, inject, route, start_dispatcher
from tests.support.stack import Stack
from vebus.config import parse_config
from vebus.local.embedded import free_port
from vebus_dispatcher.sinks import SinkContext
from vebus_dispatcher.sinks.eventbridge import EventBridgeSink

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


@dataclass
class Aws:
    endpoint: str
    queue_url: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def sink(self) -> dict[str, Any]:
        return {"kind": "eventbridge", "region": REGION, "endpoint_url": self.endpoint,
                "source": "vebus.test", **KEYS}  # fmt: skip

    def received(self, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The EventBridge events the rule put on the queue, once `want` have come."""
        import time

        sqs = self.client("sqs")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            answer = sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for m in answer.get("Messages", []):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return got


@pytest.fixture
def aws() -> Iterator[Aws]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        a = Aws(f"http://127.0.0.1:{port}", "")
        sqs = a.client("sqs")
        a.queue_url = sqs.create_queue(QueueName="vebus-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=a.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        events = a.client("events")
        events.put_rule(
            Name="vsphere", EventPattern=json.dumps({"source": ["vebus.test"]}), State="ENABLED"
        )
        events.put_targets(Rule="vsphere", Targets=[{"Id": "queue", "Arn": arn}])
        yield a
    finally:
        server.stop()


async def test_events_arrive_on_the_bus_with_the_vsphere_class_as_detail_type(
    stack: Stack, nc: Client, aws: Aws
) -> None:
    js = await start_dispatcher(stack, nc, [route("aws", sink=aws.sink())])
    for n in range(12):
        await inject(js, "aws", event(n))
    got = await asyncio.to_thread(aws.received, 12)
    assert len(got) == 12, stack.logs()
    assert {e["detail-type"] for e in got} == {"VmPoweredOffEvent"}
    assert {e["source"] for e in got} == {"vebus.test"}
    detail = next(e["detail"] for e in got if e["detail"]["id"] == "3")
    assert detail["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert detail["source"] == "https://vc01.example.com/sdk"
    assert detail["data"]["Vm"]["Name"] == "test-3"  # the CloudEvent, data embedded as JSON
    assert sorted(e["detail"]["id"] for e in got) == sorted(str(n) for n in range(12))


async def test_events_delivered_at_once_share_putevents_calls_of_up_to_10(
    nc: Client, aws: Aws
) -> None:
    raw = route("aws", sink=aws.sink(), max_in_flight=32)
    r = parse_config({"routes": [raw]}, {}).routes[0]
    sink = EventBridgeSink(r.sink, SinkContext(route=r, nc=nc, js=nc.jetstream()))  # type: ignore[arg-type]
    try:
        await asyncio.gather(*(sink.deliver(event(n), {}) for n in range(25)))
    finally:
        await sink.close()
    print(f"25 events in {sink.calls} PutEvents calls")
    assert sink.entries == 25
    assert 3 <= sink.calls <= 6  # ceil(25 / 10) when they all come at once
    got = await asyncio.to_thread(aws.received, 25)
    assert sorted(e["detail"]["id"] for e in got) == sorted(str(n) for n in range(25))
