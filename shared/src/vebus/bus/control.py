"""Asking every replica at once over core NATS: scatter-gather requests and discovery.

A request published with a reply inbox reaches every subscriber (no queue group), and all
answers that arrive within a short wait are collected: how `vebus routes apply` finds the
replicas that must report a new route set, and how `vebus status` reads every service's
status. Discovery uses the NATS micro-service protocol (`$SRV.PING.<service>`), which
every vebus service answers through nats.micro (vebus.runtime.service registers it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from vebus import names

__all__ = ["gather", "instance_of", "ping"]


async def gather(nc: Client, subject: str, wait: float, payload: bytes = b"") -> list[bytes]:
    """Publish one request on `subject` and return every answer that came within `wait`."""
    inbox = nc.new_inbox()
    got: list[bytes] = []

    async def collect(msg: Msg) -> None:
        got.append(msg.data)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, payload, reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return got


async def ping(nc: Client, service: str, wait: float = 1.0) -> list[dict[str, Any]]:
    """`$SRV.PING.vebus-<service>`: every replica of the service that is connected."""
    answers = []
    for data in await gather(nc, f"{names.SRV_PING}.{names.micro_service(service)}", wait):
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(data))
    return [a for a in answers if isinstance(a, dict)]


def instance_of(ping_answer: Mapping[str, Any]) -> str:
    """The replica's instance id from its `$SRV.PING` answer (the service's metadata)."""
    meta = ping_answer.get("metadata") or {}
    return str(meta.get("instance") or ping_answer.get("id") or "?")
