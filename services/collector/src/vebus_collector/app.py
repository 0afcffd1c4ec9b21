"""The collector: follows every configured vCenter (one active replica per vCenter, by
lease) and serves the webhook source; both publish to VEBUS_EVENTS."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vebus.bus.streams import ensure_streams
from vebus.runtime.service import ServiceContext, ServiceSettings, run_service
from vebus_collector.checkpoint import ensure_bucket
from vebus_collector.checks import checks_for, ensure_checks_bucket
from vebus_collector.lease import ensure_lease_bucket
from vebus_collector.metrics import VCenterMetrics
from vebus_collector.publisher import DEFAULT_WINDOW
from vebus_collector.runner import VCenterRunner
from vebus_collector.status import VCenterStatus, overall
from vebus_collector.webhook import WebhookSource

__all__ = ["main"]

log = logging.getLogger(__name__)


async def _body(ctx: ServiceContext) -> None:
    config = ctx.config
    replicas = config.nats.replicas
    await ctx.startup("streams", lambda: ensure_streams(ctx.js, config.stream_settings()))
    checkpoints = await ctx.startup("checkpoints", lambda: ensure_bucket(ctx.js, replicas))
    leases, ttl = await ctx.startup("leases", lambda: ensure_lease_bucket(ctx.js, replicas))
    check_state = (
        await ctx.startup("check state", lambda: ensure_checks_bucket(ctx.js, replicas))
        if config.checks
        else None
    )
    statuses = [VCenterStatus(vc.name) for vc in config.vcenters]

    def refresh() -> None:
        ctx.ready = overall(statuses)

    for status in statuses:
        status.on_change = refresh
    ctx.health_details["vcenters"] = lambda: {s.name: s.as_dict() for s in statuses}
    if ctx.telemetry is not None:
        ctx.telemetry.metrics.registry.register(VCenterMetrics(statuses))

    webhook: WebhookSource | None = None
    if config.webhook is not None:
        webhook = WebhookSource(config.webhook, ctx.js, ctx.nc.max_payload)
        await webhook.start()
        ctx.health_details["webhook"] = webhook.status

    runners = [
        VCenterRunner(
            vc,
            js=ctx.js,
            checkpoints=checkpoints,
            leases=leases,
            lease_ttl=ttl,
            instance=ctx.settings.instance,
            status=status,
            stopping=ctx.stopping,
            max_payload=ctx.nc.max_payload,
            publish_window=DEFAULT_WINDOW,
            checks=checks_for(config, vc.name),
            check_state=check_state,
        )
        for vc, status in zip(config.vcenters, statuses, strict=True)
    ]
    if not runners:
        log.info("no vCenter in the config%s", "" if webhook else ": nothing to collect")
    refresh()
    try:
        results: list[Any] = await asyncio.gather(
            *(r.run() for r in runners), ctx.stopping.wait(), return_exceptions=True
        )
        for vc, result in zip(config.vcenters, results, strict=False):
            if isinstance(result, BaseException):
                log.error("%s: stopped with %r", vc.name, result)
    finally:
        if webhook is not None:
            await webhook.stop()


async def main(settings: ServiceSettings) -> int:
    """Run the collector until SIGTERM."""
    return await run_service(settings, _body)
