"""The web console under load (issue 19).

    uv run python -m loadtest.console [--short] [--only live|history] [--keep DIR]

- live: core-NATS events at 1,000/s for 60 s (`--short`: 6 s) while headless Chromium
  shows the live view. Reported: the tab's JS heap and DOM nodes over time (CDP
  Performance.getMetrics; bounded = the last sample within a small factor of the first
  after warm-up), the rows on the page (at most 200), the frames the page got, the
  sampling notice, and the console process's CPU per published event (utime + stime from
  /proc, over the run).
- history: 100,000 events (`--short`: 5,000) spread over 1,000 VMs, 50 users, 2 vCenters
  and 20 classes stored in VEBUS_EVENTS, then one-hour searches through the console's page
  (`GET /history`, a bearer token), each run 3 times (median): no filter, by type (the
  subject decides), by object and by user (bodies are read), and an object that no event
  names (the whole hour is read). Goal: the first page in under 2 s.

Writes loadtest/results/console.json (`-short` when short) with the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import yaml

from loadtest.common import machine, print_table, write_results
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.streams import StreamSettings, ensure_streams
from vebus.local.embedded import ManagedProcess, free_port, start_nats, start_service
from vebus.passwords import hash_secret

TOKEN = "loadtest-console-token-0123456789"
CHROMIUM = os.environ.get("VEBUS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
CLASSES = [
    "VmPoweredOffEvent", "VmPoweredOnEvent", "VmReconfiguredEvent", "VmCreatedEvent",
    "VmRemovedEvent", "VmMigratedEvent", "VmStartingEvent", "VmStoppingEvent",
    "UserLoginSessionEvent", "UserLogoutSessionEvent", "AlarmStatusChangedEvent",
    "TaskEvent", "VmSuspendedEvent", "VmResettingEvent", "VmRenamedEvent",
    "HostConnectionLostEvent", "EnteredMaintenanceModeEvent", "DatastoreFileUploadedEvent",
    "VmBeingClonedEvent", "VmClonedEvent",
]  # fmt: skip


def _event(i: int) -> tuple[str, bytes, dict[str, str]]:
    """Event number `i`: subject, body (~1.2 KB, VEBA's fields) and headers."""
    vc = ("vc01", "vc02")[i % 2]
    cls = CLASSES[i % len(CLASSES)]
    vm, user = f"vm-{(i * 7) % 1000:04d}", f"VSPHERE.LOCAL\\user-{i % 50:02d}"
    data = {
        "Key": i, "ChainId": i, "CreatedTime": "2025-01-02T03:04:05.123456Z", "UserName": user,
        "Datacenter": {"Name": "dc-1", "Datacenter": {"Type": "Datacenter", "Value": "dc-1"}},
        "ComputeResource": {"Name": "cl-1", "ComputeResource": {"Type": "ClusterComputeResource",
                                                                 "Value": "domain-c1"}},
        "Host": {"Name": f"esx-{i % 32:02d}.example.com",
                 "Host": {"Type": "HostSystem", "Value": f"host-{i % 32}"}},
        "Vm": {"Name": vm, "Vm": {"Type": "VirtualMachine", "Value": f"vm-{i % 1000}"}},
        "Ds": {"Name": "ds-1", "Datastore": {"Type": "Datastore", "Value": "datastore-1"}},
        "Net": None, "Dvs": None, "ChangeTag": "",
        "FullFormattedMessage": f"{vm} on esx-{i % 32:02d}.example.com in dc-1: {cls} by {user}",
        "Template": False,
    }  # fmt: skip
    ev = CloudEvent(
        id=str(i),
        source=f"https://{vc}.example.com/sdk",
        type=f"com.vmware.vsphere.{cls}.v0",
        subject=cls,
        time="2025-01-02T03:04:05.123456Z",
        extensions={"eventclass": "event", "vsphereapiversion": "8.0.2.0"},
        data=json.dumps(data).encode(),
    )
    return (
        names.event_subject(vc, cls),
        ev.data,
        to_headers(ev, {names.MSG_ID: f"{vc}:1:{i}"}),
    )


class Console:
    """nats-server with the vebus streams, and the console process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    async def __aenter__(self) -> Console:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats_proc, port = start_nats(self.workdir / "nats")
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.port = free_port()
        config = {
            "nats": {"url": self.nats_url},
            "console": {
                "listen": f"127.0.0.1:{self.port}",
                "live_rate": 50,
                "users": [{"name": "bench", "role": "operator", "token_hash": hash_secret(TOKEN)}],
            },
        }
        path = self.workdir / "vebus.yaml"
        path.write_text(yaml.safe_dump(config))
        self.nc = await nats.connect(self.nats_url)
        await ensure_streams(self.nc.jetstream(), StreamSettings())
        self.proc: ManagedProcess = start_service(
            "console", path, health_port=free_port(), log_path=self.workdir / "console.log"
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.url}/live", headers=self.auth) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(self.proc.output()[-3000:])
                await asyncio.sleep(0.2)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def __aexit__(self, *_: object) -> None:
        self.proc.kill()
        await self.nc.close()
        self.nats_proc.kill()


# ---------------------------------------------------------------------------- live


async def _publish_steady(nc: Any, rate: float, seconds: float) -> int:
    """Core-NATS publishes at `rate`/s for `seconds`, in 10 ms ticks; returns how many."""
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            subject, body, headers = _event(sent)
            await nc.publish(subject, body, headers=headers)
            sent += 1
        await asyncio.sleep(0.01)
    await nc.flush()
    return sent


async def live(workdir: Path, short: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    seconds = 6.0 if short else 60.0
    async with Console(workdir) as c, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = await browser.new_context(
            viewport={"width": 1400, "height": 900}, extra_http_headers=c.auth
        )
        page = await context.new_page()
        await page.goto(f"{c.url}/live")
        await page.wait_for_function("document.getElementById('state').textContent === 'live'")
        cdp = await context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        samples: list[dict[str, float]] = []
        cpu0, t0 = c.cpu_seconds(), time.perf_counter()
        publisher = asyncio.create_task(_publish_steady(c.nc, 1000.0, seconds))
        notice = False
        while not publisher.done():
            await asyncio.sleep(2.0)
            metrics = {
                m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]
            }
            rows = await page.locator("#rows tr").count()
            notice = notice or await page.locator("#sampling").is_visible()
            samples.append(
                {
                    "t": round(time.perf_counter() - t0, 1),
                    "js_heap_mb": metrics["JSHeapUsedSize"] / 2**20,
                    "dom_nodes": metrics["Nodes"],
                    "rows": rows,
                }
            )
        published = await publisher
        cpu = c.cpu_seconds() - cpu0
        wall = time.perf_counter() - t0
        text = await page.locator("#sampling").text_content()
        await page.screenshot(path=workdir / "live-under-load.png")
        await browser.close()
    warm = [s for s in samples if s["t"] >= min(10.0, seconds / 2)] or samples
    heap = [s["js_heap_mb"] for s in warm]
    nodes = [s["dom_nodes"] for s in warm]
    return {
        "published": published,
        "seconds": round(wall, 1),
        "rate_per_s": round(published / wall, 1),
        "console_cpu_s": round(cpu, 2),
        "console_cpu_us_per_event": round(cpu / published * 1e6, 1),
        "console_cpu_share": round(cpu / wall, 3),
        "js_heap_mb_min": round(min(heap), 2),
        "js_heap_mb_max": round(max(heap), 2),
        "dom_nodes_max": max(nodes),
        "rows_max": max(s["rows"] for s in samples),
        "sampling_notice": notice,
        "sampling_text": text,
        "samples": samples,
    }


# ---------------------------------------------------------------------------- history


async def _store(nc: Any, count: int) -> float:
    """Store `count` events in VEBUS_EVENTS (acknowledged); returns the seconds it took."""
    js = nc.jetstream()
    start = time.perf_counter()
    batch = 1000
    for first in range(0, count, batch):
        acks = []
        for i in range(first, min(first + batch, count)):
            subject, body, headers = _event(i)
            acks.append(js.publish(subject, body, headers=headers))
        await asyncio.gather(*acks)
    return time.perf_counter() - start


SEARCHES = [
    ("no filter", {}),
    ("type (subject)", {"type": "VmReconfiguredEvent"}),
    ("vCenter + type", {"vcenter": "vc02", "type": "VmPoweredOnEvent"}),
    ("user (body)", {"user": "user-17"}),
    ("object (body)", {"object": "vm-0421"}),
    ("object + type", {"object": "vm-0421", "type": "VmCreatedEvent"}),
    ("object, no match (reads all)", {"object": "vm-none"}),
]


async def history(workdir: Path, short: bool) -> dict[str, Any]:
    count = 5_000 if short else 100_000
    rows = []
    async with Console(workdir) as c:
        stored = await _store(c.nc, count)
        async with aiohttp.ClientSession(headers=c.auth) as http:
            for label, params in SEARCHES:
                times, found, scanned = [], 0, 0
                for _ in range(3):
                    started = time.perf_counter()
                    async with http.get(f"{c.url}/history", params={"from": "1h", **params}) as r:
                        body = await r.text()
                        assert r.status == 200, body[:500]
                    times.append(time.perf_counter() - started)
                    found = body.count('<tr><td><a href="/events/')
                    marker = (
                        body.split("; read ", 1)[1].split(" in ", 1)[0]
                        if "; read " in body
                        else "0"
                    )
                    scanned = int(marker)
                rows.append(
                    {
                        "search": label,
                        "first_page_s": round(statistics.median(times), 3),
                        "rows": found,
                        "events_read": scanned,
                    }
                )
    return {"events": count, "store_s": round(stored, 1), "searches": rows}


async def run(only: str | None, short: bool, keep: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"short": short, "machine": machine()}
    for name, fn in (("live", live), ("history", history)):
        if only and only != name:
            continue
        with tempfile.TemporaryDirectory(prefix=f"vebus-console-{name}-") as tmp:
            workdir = (keep / name) if keep else Path(tmp)
            out[name] = await fn(workdir, short)
    out["machine_after"] = {"loadavg": list(os.getloadavg())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.console", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--short", action="store_true")
    p.add_argument("--only", choices=["live", "history"])
    p.add_argument("--keep", type=Path)
    a = p.parse_args()
    result = asyncio.run(run(a.only, a.short, a.keep))
    if "live" in result:
        lv = {k: v for k, v in result["live"].items() if k not in ("samples", "sampling_text")}
        print_table("console live view, 1,000 events/s", [lv])
    if "history" in result:
        h = result["history"]
        print_table(f"console history, {h['events']:,} events in the last hour", h["searches"])
    path = write_results("console" + ("-short" if a.short else ""), result)
    print(f"load average {result['machine']['loadavg']}; written: {path}")


if __name__ == "__main__":
    main()
