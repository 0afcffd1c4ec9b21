"""One vCenter in one collector replica: wait for its lease, follow it while holding it.

Standby: try to take the lease every POLL_INTERVAL. Active: a Follower runs beside the
lease renewal; when the renewal fails the follower is cancelled at once (it publishes
nothing more and writes no checkpoint) and the replica goes back to standby. On SIGTERM
the follower stops, writes its checkpoint, and the lease is released so a standby takes
over at its next poll rather than after the TTL. Nothing here stops the other vCenters:
every failure is logged, reported in /readyz, and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from vebus import aio
from vebus.bus.publish import describe
from vebus.config import Check, VCenterConfig
from vebus.errors import PublishError
from vebus_collector.checkpoint import CheckpointStore, last_published
from vebus_collector.checks import CheckRunner
from vebus_collector.enrich import Enricher
from vebus_collector.errors import LeaseLostError
from vebus_collector.follower import Follower
from vebus_collector.lease import POLL_INTERVAL, Lease
from vebus_collector.position import Position
from vebus_collector.publisher import JetStreamPublisher
from vebus_collector.status import VCenterStatus
from vebus_collector.vcenter import VCenterClient

__all__ = ["VCenterRunner"]

log = logging.getLogger(__name__)

#: an active replica that cannot reach its vCenter for this long lets another one try
HANDOFF_AFTER = 30.0
#: and stays out of the race for the lease this long (standbys poll every second)
HANDOFF_PAUSE = 3.0
#: pyvmomi threads per vCenter (tail, watchdog, catch-up/enrichment, one spare for a hung call)
THREADS = 4


class VCenterRunner:
    """Standby or active for one vCenter until the service stops."""

    def __init__(
        self,
        cfg: VCenterConfig,
        *,
        js: JetStreamContext,
        checkpoints: KeyValue,
        leases: KeyValue,
        lease_ttl: float,
        instance: str,
        status: VCenterStatus,
        stopping: asyncio.Event,
        max_payload: int,
        publish_window: int,
        checks: Sequence[Check] = (),
        check_state: KeyValue | None = None,
    ) -> None:
        self.cfg = cfg
        self.js = js
        self.checkpoints = checkpoints
        self.lease = Lease(leases, cfg.name, instance, lease_ttl)
        self.status = status
        self.stopping = stopping
        self.max_payload = max_payload
        self.publish_window = publish_window
        #: the scheduled checks this vCenter runs while this replica holds its lease
        self.checks = list(checks)
        self.check_state = check_state

    async def run(self) -> None:
        """Until stopping: acquire the lease, follow, step down when it is lost."""
        while not self.stopping.is_set():
            self.status.active = False
            if not await self._acquire():
                break
            self.status.active = True
            self.status.takeovers += 1
            log.info(
                "%s: this replica (%s) is now active for %s",
                self.cfg.name,
                self.lease.holder,
                self.cfg.url,
            )
            try:
                await self._term()
            except LeaseLostError as e:
                log.warning("%s: %s; going back to standby", self.cfg.name, e)
            except PublishError as e:
                # JetStream refuses or does not acknowledge (no storage left, no leader):
                # nothing after the last stored event was checkpointed; the next term
                # resumes from it. One line, no traceback: the cause is NATS's, not ours.
                log.error("%s: %s; resuming from the last stored event", self.cfg.name, e)
                with contextlib.suppress(Exception):
                    await self.lease.release()
                await self._pause(1.0)
            except Exception:
                log.exception("%s: follower failed; going back to standby", self.cfg.name)
                await self.lease.release()
                await self._pause(1.0)
        self.status.active = False

    async def _acquire(self) -> bool:
        """Wait for the lease, keeping the holder shown in /readyz."""
        while not self.stopping.is_set():
            try:
                if await self.lease.try_acquire():
                    return True
                self._show_holder()
                self.status.set("standby")
            except Exception as e:
                why = describe(self.lease.subject, e)
                log.warning("%s: cannot reach the lease bucket: %s", self.cfg.name, why)
                self.status.set("starting", f"lease bucket: {why}")
            await self._pause(POLL_INTERVAL)
        return False

    def _show_holder(self) -> None:
        self.status.holder = self.lease.other.holder if self.lease.other else None

    async def _pause(self, seconds: float) -> None:
        await aio.sleep(seconds, self.stopping)

    async def _term(self) -> None:
        """One leadership term: follow while renewing the lease."""
        executor = ThreadPoolExecutor(THREADS, thread_name_prefix=f"vc-{self.cfg.name}")
        client = VCenterClient(self.cfg)
        publisher: JetStreamPublisher[Position] = JetStreamPublisher(
            self.js, window=self.publish_window, allowed=self.lease.held
        )
        follower = Follower(
            self.cfg,
            client=client,
            publisher=publisher,
            store=CheckpointStore(self.checkpoints, self.cfg.name),
            stream_last=lambda: last_published(self.js, self.cfg.name),
            status=self.status,
            stopping=self.stopping,
            max_payload=self.max_payload,
            executor=executor,
            leader=self.lease.held,
            enricher=Enricher(client.vm_uuids) if self.cfg.enrich else None,
        )
        following = asyncio.create_task(follower.run(), name=f"follow-{self.cfg.name}")
        renewing = asyncio.create_task(self.lease.keep(), name=f"lease-{self.cfg.name}")
        checking: asyncio.Task[None] | None = None
        if self.checks and self.check_state is not None:
            checks = CheckRunner(
                self.cfg, self.checks, js=self.js, kv=self.check_state, allowed=self.lease.held
            )
            checking = asyncio.create_task(checks.run(), name=f"checks-{self.cfg.name}")
        handed_off = False
        try:
            while not handed_off:
                done, _ = await asyncio.wait(
                    {following, renewing}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                failing = follower.failing_since
                if failing is not None and time.monotonic() - failing > HANDOFF_AFTER:
                    log.warning(
                        "%s: unreachable from this replica for %.0fs; releasing the lease so "
                        "that another replica can try",
                        self.cfg.name,
                        time.monotonic() - failing,
                    )
                    handed_off = True
        finally:
            # a lost lease cancels the follower at once: it publishes and saves nothing more;
            # a stop lets it finish (it wrote its checkpoint) and then ends the renewal
            for task in (following, renewing):
                if not task.done():
                    task.cancel()
            results = await asyncio.gather(following, renewing, return_exceptions=True)
            if checking is not None:
                checking.cancel()
                await asyncio.gather(checking, return_exceptions=True)
            await self._close(client, executor)
        if self.stopping.is_set():
            await self.lease.release()
            return
        if handed_off:
            await self.lease.release()
            await self._pause(HANDOFF_PAUSE)
            return
        for result in results:
            if isinstance(result, Exception):
                raise result

    @staticmethod
    async def _close(client: VCenterClient, executor: ThreadPoolExecutor) -> None:
        """Log out (bounded: a hung vCenter must not hold the replica) and drop the threads."""
        closing = asyncio.get_running_loop().run_in_executor(executor, client.close)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(closing), 5)
        executor.shutdown(wait=False, cancel_futures=True)
