"""Driving a dispatcher in tests: routes, events injected as the filter would, outcomes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.support.stack import Stack
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import DeadLetter, iter_dead_letters
from vebus.bus.publish import publish
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.names import MSG_ID, ROUTES_STREAM, dispatcher_durable, route_subject

T = TypeVar("T")


def route(
    name: str,
    url: str = "",
    *,
    sink: dict[str, Any] | None = None,
    mode: str = "binary",
    max_attempts: int = 3,
    timeout: float = 5.0,
    initial: float = 0.05,
    max_backoff: float = 1.0,
    multiplier: float = 2,
    jitter: float = 0.2,
    max_in_flight: int = 16,
    headers: dict[str, str] | None = None,
    **delivery: Any,
) -> dict[str, Any]:
    """A route config: a webhook to `url`, or the given `sink`, with a quick retry policy."""
    if sink is None:
        sink = {"kind": "webhook", "url": url, "mode": mode}
        if headers:
            sink["headers"] = headers
    return {
        "name": name,
        "sink": sink,
        "delivery": {
            "max_attempts": max_attempts,
            "timeout": timeout,
            "max_in_flight": max_in_flight,
            "backoff": {
                "initial": initial,
                "max": max_backoff,
                "multiplier": multiplier,
                "jitter": jitter,
            },
            **delivery,
        },
    }


def event(n: int | str, **overrides: Any) -> CloudEvent:
    """A VmPoweredOffEvent-like CloudEvent with id `n`."""
    data = {
        "Key": n,
        "UserName": "VSPHERE.LOCAL\\Administrator",
        "Vm": {"Name": f"test-{n}", "Vm": {"Type": "VirtualMachine", "Value": f"vm-{n}"}},
        "FullFormattedMessage": f"test-{n} on host-1 is powered off",
    }
    fields: dict[str, Any] = {
        "id": str(n),
        "source": "https://vc01.example.com/sdk",
        "type": "com.vmware.vsphere.VmPoweredOffEvent.v0",
        "time": "2024-05-01T10:11:12.345678Z",
        "subject": "VmPoweredOffEvent",
        "extensions": {"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
        "data": json.dumps(data).encode(),
    }
    fields.update(overrides)
    return CloudEvent(**fields)


async def inject(
    js: JetStreamContext, route_name: str, ev: CloudEvent, extra: dict[str, str] | None = None
) -> None:
    """Publish `ev` onto the route the way the filter does."""
    headers = to_headers(ev, {MSG_ID: f"vc01:1:{ev.id}:{route_name}", **(extra or {})})
    await publish(js, route_subject(route_name), ev.data, headers)


async def prepare(stack: Stack, nc: Client, routes: list[dict[str, Any]]) -> JetStreamContext:
    """Write the config and create the streams as a deployment would."""
    stack.write_config({"routes": routes})
    js = nc.jetstream()
    await ensure_streams(js, load_config(stack.config_path).stream_settings())
    return js


async def start_dispatcher(
    stack: Stack, nc: Client, routes: list[dict[str, Any]]
) -> JetStreamContext:
    """Write the config, create the streams, start the dispatcher and wait until ready."""
    js = await prepare(stack, nc, routes)
    # stack.start blocks while it polls /readyz: keep the sinks in this loop answering
    await asyncio.to_thread(stack.start, "dispatcher")
    return js


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, stack: Stack, timeout: float = 30.0
) -> T:
    """Poll `probe` until it returns something, or fail with the dispatcher's log."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout}s\n{stack.logs()}")
        await asyncio.sleep(0.1)


async def dead_letters(js: JetStreamContext, route_name: str) -> list[DeadLetter]:
    return [dl async for dl in iter_dead_letters(js, route=route_name)]


def one_dead_letter(js: JetStreamContext, route_name: str) -> Callable[[], Awaitable[Any]]:
    async def probe() -> DeadLetter | None:
        found = await dead_letters(js, route_name)
        assert len(found) <= 1, found
        return found[0] if found else None

    return probe


def route_settled(js: JetStreamContext, route_name: str) -> Callable[[], Awaitable[Any]]:
    """True once the route's consumer has nothing pending and nothing unacknowledged."""

    async def probe() -> bool | None:
        info = await js.consumer_info(ROUTES_STREAM, dispatcher_durable(route_name))
        return True if info.num_pending == 0 and info.num_ack_pending == 0 else None

    return probe


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
