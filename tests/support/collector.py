"""Collector replicas as processes for the tests, and their /readyz view."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from nats.aio.client import Client

from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus.local.embedded import ManagedProcess, free_port, start_service
from vebus.names import EVENTS_STREAM


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """(status, body) of a service's /readyz; (0, {}) when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def start_replica(stack: Stack, name: str) -> int:
    """Start one more collector process as `name` (killed with the stack); its health port."""
    port = free_port()
    proc = start_service(
        "collector", stack.config_path, health_port=port, log_path=stack.workdir / f"{name}.log"
    )
    stack.procs[name] = proc
    stack.health[name] = port
    return port


def vcenter_state(port: int, vcenter: str) -> dict[str, Any]:
    """The /readyz entry of one vCenter ({} when the replica does not answer)."""
    _, body = readyz(port)
    return dict((body.get("vcenters") or {}).get(vcenter) or {})


async def wait_until(
    predicate: Any, timeout: float, what: str, proc: ManagedProcess | None = None
) -> float:
    """Poll `predicate()` (in a thread) every 0.1 s; returns the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            logs = proc.output()[-3000:] if proc is not None else ""
            raise AssertionError(f"{what}: not within {timeout}s\n{logs}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def stream_keys(nc: Client, vcenter: str, epoch: str | None = None) -> list[int]:
    """The vebus-key of every message of `vcenter` in VEBUS_EVENTS, in stream order."""
    msgs = await stream_messages(nc, EVENTS_STREAM, f"vebus.events.{vcenter}.>")
    return [
        int((m.headers or {})["vebus-key"])
        for m in msgs
        if epoch is None or (m.headers or {}).get("vebus-epoch") == epoch
    ]
