"""Scheduled checks: periodic inventory probes that publish events of their own.

A check (snapshot_age, datastore_usage, vm_powered_off; see docs/checks.md) runs every
`interval` on each vCenter in its scope, in the collector replica that holds that
vCenter's lease (it runs inside the lease term, beside the follower, in its own thread
and vCenter session so that a slow inventory read never holds back event collection).

Deduplication: a condition (one object past the threshold) gives one
`com.vebus.check.<Name>.v0` event when it starts and one `...<Name>Cleared.v0` when it
ends, however many rounds see it. The open conditions of each (vCenter, check) live in
the NATS KV bucket `vebus_checks`, one key per condition
(`checks.<vcenter>.<check>.<hash of the object>`: a check that finds thousands of objects
writes only what changes), so a restarted or a newly elected collector knows what was
already reported. Each round:

1. probe vCenter (in a thread): the objects past the threshold now;
2. record new conditions and cleared ones in the bucket (compare-and-set on the revision:
   a replica that lost the vCenter cannot overwrite its successor's state), each marked
   as not yet published;
3. publish what is not yet published (waiting for JetStream's ack) and record that.

A crash between 2 and 3 leaves the events marked unpublished: the next round (in this or
another replica) publishes them, with the same Nats-Msg-Id
`check:<check>:<vcenter>:<object>:<since>` (`:cleared` for the clearing event): stable
from check, object and condition start, so JetStream drops a repeat inside its duplicate
window. Delivery is at-least-once, as for vSphere events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vebus import aio, names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.kv import ensure_bucket
from vebus.bus.publish import OutgoingMessage, publish
from vebus.config import (
    Check,
    Config,
    DatastoreUsageCheck,
    SnapshotAgeCheck,
    VCenterConfig,
    VmPoweredOffCheck,
)
from vebus.names import MSG_ID
from vebus.vsphere import Session
from vebus_collector.errors import CheckpointConflictError, LeaseLostError
from vebus_collector.mapping import rfc3339
from vebus_collector.probes import Finding, probe

__all__ = [
    "EVENT_NAMES",
    "CheckRunner",
    "Condition",
    "ConditionStore",
    "checks_for",
    "ensure_checks_bucket",
    "event_type",
    "to_message",
]

log = logging.getLogger(__name__)

#: the event name of each check kind: com.vebus.check.<name>.v0 and <name>Cleared
EVENT_NAMES: dict[type[Check], str] = {
    SnapshotAgeCheck: "SnapshotAgeExceeded",
    DatastoreUsageCheck: "DatastoreUsageExceeded",
    VmPoweredOffCheck: "VmPoweredOffTooLong",
}
#: a round that fails (vCenter unreachable) is tried again this soon, not a full interval on
RETRY_AFTER = 30.0


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """One open condition as stored in the bucket."""

    finding: Finding
    #: when the condition began (the Finding's own `since`, else first observation)
    since: str
    #: when a collector first saw it
    observed: str
    #: the Exceeded event is stored in VEBUS_EVENTS
    raised: bool = False
    #: when it was seen cleared (the Cleared event is still to be published)
    cleared: str | None = None


async def ensure_checks_bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    """The bucket of open check conditions, created when missing."""
    return await ensure_bucket(
        js,
        names.CHECKS_BUCKET,
        replicas=replicas,
        description="vebus scheduled checks: open conditions per vCenter and check",
    )


def checks_for(config: Config, vcenter: str) -> list[Check]:
    """The checks whose scope includes `vcenter` (an empty scope.vcenters: all)."""
    return [c for c in config.checks if not c.scope.vcenters or vcenter in c.scope.vcenters]


def event_type(check: Check, *, cleared: bool = False) -> str:
    """`com.vebus.check.SnapshotAgeExceeded.v0`, or `...SnapshotAgeExceededCleared.v0`."""
    return f"com.vebus.check.{EVENT_NAMES[type(check)]}{'Cleared' if cleared else ''}.v0"


class ConditionStore:
    """The open conditions of one (vCenter, check): one KV key each, written only with
    compare-and-set on the revision this replica last read or wrote."""

    def __init__(self, kv: KeyValue, vcenter: str, check: str) -> None:
        self._kv = kv
        self.prefix = f"checks.{names.token(vcenter)}.{names.token(check)}"
        #: KV key -> the revision last read or written
        self._revisions: dict[str, int] = {}

    def kv_key(self, key: str) -> str:
        """The KV key of a condition (object keys hold characters KV keys may not)."""
        return f"{self.prefix}.{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    async def load(self) -> dict[str, Condition]:
        """Every open condition, by its object key."""
        self._revisions.clear()
        out: dict[str, Condition] = {}
        # a watch delivers every current value, then None (nats-py's KeyWatcher is untyped)
        watcher: Any = await self._kv.watch(f"{self.prefix}.>", ignore_deletes=True)
        try:
            while (entry := await watcher.updates(timeout=10)) is not None:
                if not entry.value or entry.operation is not None:
                    continue  # a delete or purge marker
                try:
                    cond = msgspec.json.decode(entry.value, type=Condition)
                except msgspec.DecodeError as e:
                    log.warning("check state %s is unreadable (%s); ignoring it", entry.key, e)
                    continue
                self._revisions[entry.key] = entry.revision or 0
                out[cond.finding.key] = cond
        finally:
            await watcher.stop()
        return out

    async def put(self, cond: Condition) -> None:
        """Write `cond` (CheckpointConflictError when another replica wrote it since)."""
        k = self.kv_key(cond.finding.key)
        value = msgspec.json.encode(cond)
        try:
            if k in self._revisions:
                self._revisions[k] = await self._kv.update(k, value, last=self._revisions[k])
            else:
                self._revisions[k] = await self._kv.create(k, value)
        except KeyWrongLastSequenceError as e:
            raise CheckpointConflictError(f"check state {k} was written by another replica") from e

    async def remove(self, key: str) -> None:
        """Drop a condition whose Cleared event is published."""
        k = self.kv_key(key)
        try:
            await self._kv.delete(k, last=self._revisions.pop(k, None))
        except KeyWrongLastSequenceError as e:
            raise CheckpointConflictError(f"check state {k} was written by another replica") from e


def _threshold(check: Check) -> tuple[float, str]:
    if isinstance(check, DatastoreUsageCheck):
        return float(check.threshold), "percent"
    return float(check.threshold), "seconds"  # a Duration (a float subclass msgspec won't encode)


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"


def _message(check: Check, f: Finding, cleared: bool) -> str:
    limit, _ = _threshold(check)
    if isinstance(check, SnapshotAgeCheck):
        snap = f.data.get("Snapshot", {}).get("Name", "?")
        what = f"Snapshot {snap!r} of VM {f.name}"
        if cleared:
            return f"{what} is gone or no longer older than {_days(limit)}"
        return f"{what} is {_days(f.value)} old (threshold {_days(limit)})"
    if isinstance(check, DatastoreUsageCheck):
        if cleared:
            return f"Datastore {f.name} is back under its usage threshold ({limit:g}%)"
        return f"Datastore {f.name} is {f.value:.1f}% full (threshold {limit:g}%)"
    if cleared:
        return f"VM {f.name} is powered on again (or gone)"
    return f"VM {f.name} has been powered off for {_days(f.value)} (threshold {_days(limit)})"


def to_message(
    check: Check, vc: VCenterConfig, key: str, cond: Condition, *, cleared: bool
) -> OutgoingMessage:
    """The CloudEvent for a condition's start or end, as published on NATS.

    Everything in it comes from the stored condition, so a re-publish after a crash is
    the same message (same id, same Nats-Msg-Id)."""
    f = cond.finding
    limit, unit = _threshold(check)
    name = EVENT_NAMES[type(check)] + ("Cleared" if cleared else "")
    ident = f"{check.name}:{vc.name}:{key}:{cond.since}" + (":cleared" if cleared else "")
    data: dict[str, Any] = {
        "Check": check.name,
        "CheckKind": check.__struct_config__.tag,
        "VCenter": vc.name,
        "Object": msgspec.to_builtins(f.object),
        "ObjectName": f.name,
        **f.data,
        "Value": f.value,
        "Threshold": limit,
        "Unit": unit,
        "Since": cond.since,
        "ObservedTime": cond.observed,
        "ClearedTime": cond.cleared if cleared else None,
        "CreatedTime": cond.cleared if cleared else cond.observed,
        "FullFormattedMessage": _message(check, f, cleared),
    }
    ce = CloudEvent(
        id=ident,
        source=vc.url,
        type=event_type(check, cleared=cleared),
        time=data["CreatedTime"],
        subject=name,
        extensions={"vebuscheck": check.name},
        data=msgspec.json.encode(data),
    )
    headers = to_headers(ce, {MSG_ID: f"check:{ident}", names.H_VCENTER: vc.name})
    return OutgoingMessage(names.event_subject("checks", check.name), ce.data, headers)


class CheckRunner:
    """Every check of one vCenter, for one lease term (cancelled when the term ends)."""

    def __init__(
        self,
        vc: VCenterConfig,
        checks: Sequence[Check],
        *,
        js: JetStreamContext,
        kv: KeyValue,
        allowed: Callable[[], bool],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.vc = vc
        self.checks = list(checks)
        self.js = js
        self.kv = kv
        #: False once the lease is lost: nothing more is published or written
        self.allowed = allowed
        self.clock = clock
        #: logged in at the first probe, again when vCenter ends it (Session.run)
        self._session = Session(vc, where=f"vcenters[{vc.name}]", notice=False)
        #: one thread: rounds of different checks take turns on the vCenter session
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"checks-{vc.name}")

    async def run(self) -> None:
        """Run each check every interval until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for check in self.checks:
                    tg.create_task(self._loop(check), name=f"check-{self.vc.name}-{check.name}")
        finally:
            logout = asyncio.get_running_loop().run_in_executor(
                self._executor, self._session.logout
            )
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(logout), 5)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self, check: Check) -> None:
        # stopped by cancellation only (the term ends): aio.sleep raises a cancel lost in
        # a round, which would otherwise check for ever
        while True:
            wait = float(check.interval)
            try:
                await self.round(check)
            except LeaseLostError:
                return  # the term ends; the runner notices the lease itself
            except CheckpointConflictError as e:
                log.warning("%s: check %s: %s; skipping this round", self.vc.name, check.name, e)
            except Exception as e:
                log.warning(
                    "%s: check %s failed (%r); trying again in %.0fs",
                    self.vc.name,
                    check.name,
                    e,
                    min(wait, RETRY_AFTER),
                )
                wait = min(wait, RETRY_AFTER)
            await aio.sleep(wait)

    def _probe(self, check: Check, now: dt.datetime) -> list[Finding]:
        """Blocking: read inventory, logging in when needed (an expired session: again)."""
        return self._session.run(lambda si: probe(si, check, now))

    async def round(self, check: Check) -> None:
        """One probe, then state and events brought up to date (see the module docstring)."""
        now = self.clock()
        loop = asyncio.get_running_loop()
        findings = await loop.run_in_executor(self._executor, self._probe, check, now)
        store = ConditionStore(self.kv, self.vc.name, check.name)
        conditions = await store.load()
        stamp = rfc3339(now)
        seen = {f.key: f for f in findings}
        for key, f in seen.items():
            if key not in conditions and f.over:
                conditions[key] = Condition(finding=f, since=f.since or stamp, observed=stamp)
                self._check_allowed()
                await store.put(conditions[key])
        for key, cond in list(conditions.items()):
            if key not in seen and cond.cleared is None:
                conditions[key] = msgspec.structs.replace(cond, cleared=stamp)
                self._check_allowed()
                await store.put(conditions[key])
        for key, cond in list(conditions.items()):
            if not cond.raised:
                await self._publish(to_message(check, self.vc, key, cond, cleared=False))
                cond = conditions[key] = msgspec.structs.replace(cond, raised=True)
                if cond.cleared is None:
                    await store.put(cond)
                self._said(check, cond, cleared=False)
            if cond.cleared is not None:
                await self._publish(to_message(check, self.vc, key, cond, cleared=True))
                del conditions[key]
                self._check_allowed()
                await store.remove(key)
                self._said(check, cond, cleared=True)

    def _said(self, check: Check, cond: Condition, *, cleared: bool) -> None:
        """Log a condition raised or cleared (after its event was published)."""
        log.info("%s: check %s: %s", self.vc.name, check.name,
                 _message(check, cond.finding, cleared))  # fmt: skip

    def _check_allowed(self) -> None:
        if not self.allowed():
            raise LeaseLostError(f"{self.vc.name}: lease lost during a check round")

    async def _publish(self, msg: OutgoingMessage) -> None:
        self._check_allowed()
        await publish(self.js, msg.subject, msg.body, msg.headers)
