"""The collector: follows every configured vCenter and publishes its events to VEBUS_EVENTS."""

from __future__ import annotations

import asyncio
import logging

from vebus.service import ServiceContext, ServiceSettings, run_service
from vebus.streams import ensure_streams
from vebus_collector.checkpoint import CheckpointStore, ensure_bucket
from vebus_collector.follower import Follower

__all__ = ["main"]

log = logging.getLogger(__name__)


async def _body(ctx: ServiceContext) -> None:
    await ensure_streams(ctx.js, ctx.config)
    kv = await ensure_bucket(ctx.js, ctx.config.nats.replicas)
    followers = [Follower(vc, ctx, CheckpointStore(kv, vc.name)) for vc in ctx.config.vcenters]
    if not followers:
        log.warning("no vCenter in the config: nothing to collect")
        ctx.ready = True
        await ctx.stopping.wait()
        return
    # ready once connected and tailing (set by the first follower that gets there)
    await asyncio.gather(*(f.run() for f in followers))


async def main(settings: ServiceSettings) -> int:
    """Run the collector until SIGTERM."""
    return await run_service(settings, _body)
