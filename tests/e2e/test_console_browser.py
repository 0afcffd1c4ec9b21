"""The console in a real browser (headless Chromium) against real nats-server, the vCenter
simulator and every service: what an operator does with it, start to end.

A VM powered off shows in the live view within 2 s; its detail opens and the JSON it
copies is accepted by `vebus routes test`; a history search by time and type finds it;
its dead letter (the sink refused it) is replayed from the page and reaches the sink; a
route is paused and resumed from the page and `vebus routes list` shows it, and who.
Each page is saved as a screenshot (VEBUS_CONSOLE_SCREENSHOTS=docs/console keeps them
for docs/console.md).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vcsim
from tests.support.console import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DLQ_TOKEN,
    OPERATOR,
    OPERATOR_PASSWORD,
    VIEWER_TOKEN,
    console_section,
    require_chromium,
    screenshot_dir,
)
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.local.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

VEBUS = str(Path(sys.executable).parent / "vebus")
SERVICES = ("collector", "filter", "dispatcher", "deadletter", "console")
SECRET = "T0000/B0000/not-to-be-shown"


def _vebus(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VEBUS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=stack.workdir,
    )


def _config(vcsim: Vcsim, sink: RecordingSink, dlq: int, port: int) -> dict[str, Any]:
    return {
        "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass"}],
        "routes": [
            {
                "name": "vm-off",
                "match": {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
                "sink": {"kind": "webhook", "url": sink.url},
                "delivery": {"max_attempts": 1},
            },
            {"name": "everything", "sink": {"kind": "console", "format": "line"}},
            {
                # never matches: only here to show a secret redacted on the pages
                "name": "chat",
                "match": {"type": ["com.example.never"]},
                "sink": {"kind": "slack", "url": f"https://hooks.slack.com/services/{SECRET}"},
            },
        ],
        "deadletter": {"api": {"listen": f"127.0.0.1:{dlq}", "token": DLQ_TOKEN}},
        "console": console_section(f"127.0.0.1:{port}", f"http://127.0.0.1:{dlq}"),
    }


def _power_off(vcsim: Vcsim) -> str:
    vs = VSphere(vcsim.url)
    try:
        vm = next(v for v in vs.vms() if v.runtime.powerState == "poweredOn")
        name = str(vm.name)
        vs.power_off(vm)
        return name
    finally:
        vs.close()


async def test_an_operator_at_work(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink, tmp_path: Path
) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    shots = screenshot_dir(tmp_path)
    port, dlq = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    stack.write_config(_config(vcsim, sink, dlq, port))
    await asyncio.to_thread(stack.start, *SERVICES)
    sink.status = 400  # the first delivery is refused: a dead letter at once (HTTP_4XX)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        page = await context.new_page()
        try:
            # ---- sign in
            await page.goto(f"{base}/live")
            await expect(page.locator("h1")).to_have_text("Sign in to the vebus console")
            await page.screenshot(path=shots / "login.png")
            await page.fill("input[name=user]", OPERATOR)
            await page.fill("input[name=password]", OPERATOR_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/live")
            await expect(page.locator("#state")).to_have_text("live", timeout=10_000)

            # ---- a VM powered off appears in the live view within 2 s
            vm = await asyncio.to_thread(_power_off, vcsim)
            powered_off = time.monotonic()
            row = page.locator("#rows tr", has_text="VmPoweredOffEvent").filter(has_text=vm)
            await expect(row.first).to_be_visible(timeout=10_000)
            seen = time.monotonic() - powered_off
            assert seen < 2.0, f"the VmPoweredOffEvent of {vm} took {seen:.2f}s to show"
            await page.screenshot(path=shots / "live.png")

            # ---- its detail: the routes it matches, and JSON that `vebus routes test` takes
            await row.first.click()
            await expect(page.locator("#detail-routes li.match")).to_have_count(2)
            await expect(page.locator("#detail-routes")).to_contain_text("matched: route vm-off")
            await page.screenshot(path=shots / "live-detail.png")
            copied = await page.locator("#detail").get_attribute("data-json")
            assert copied
            test = await asyncio.to_thread(
                _vebus, stack, "routes", "test", "--route", "vm-off", "--event", "-",
                "--config", str(stack.config_path), stdin=copied,
            )  # fmt: skip
            assert test.returncode == 0, test.stdout + test.stderr
            assert "matched: route vm-off" in test.stdout

            # ---- the history: by time and type
            await page.click("nav >> text=History")
            await page.fill("input[name=from]", "10m")
            await page.fill("input[name=type]", "VmPoweredOffEvent")
            await page.click("form.search button[type=submit]")
            found = page.locator("table.events tbody tr", has_text=vm)
            await expect(found).to_have_count(1)
            await page.screenshot(path=shots / "history.png", full_page=True)
            await found.locator("a").first.click()
            await expect(page.locator("h1")).to_contain_text("VmPoweredOffEvent")
            await page.screenshot(path=shots / "event.png", full_page=True)

            # ---- its dead letter, replayed from the page, reaches the sink
            await page.click("nav >> text=Dead letters")
            letter = page.locator("table.events tbody tr", has_text="vm-off")
            await expect(letter).to_have_count(1, timeout=15_000)
            await expect(letter).to_contain_text("HTTP_4XX")
            await page.screenshot(path=shots / "deadletters.png", full_page=True)
            await letter.locator("a").first.click()
            await expect(page.locator("h1")).to_contain_text("Dead letter")
            await page.screenshot(path=shots / "deadletter.png", full_page=True)
            sink.status = 200
            await page.click("#replay")
            await expect(page.locator("#job-state")).to_have_text("done", timeout=15_000)
            await expect(page.locator("#job-replayed")).to_have_text("1")
            # the job records who asked for it (GET /v1/replays shows the same `by`)
            await expect(page.locator("dl.facts")).to_contain_text(f"{OPERATOR} (console)")
            await page.screenshot(path=shots / "replay.png")
            assert await sink.wait_for(lambda: len(sink.accepted) == 1, timeout=15)
            assert sink.accepted[0].headers.get("ce-type") == (
                "com.vmware.vsphere.VmPoweredOffEvent.v0"
            )

            # ---- pause and resume a route; `vebus routes list` shows it and who
            await page.click("nav >> text=Routes")
            route = page.locator("#route-vm-off")
            await route.locator("button", has_text="Pause").click()
            await expect(page.locator(".flash.ok")).to_have_text("route vm-off paused")
            await expect(route).to_contain_text("PAUSED")
            # delivered 1 (the replay) and failed 1 (the dead letter), summed over replicas
            await expect(route.locator("td.num").nth(2)).to_have_text("1")
            await expect(route.locator("td.num").nth(3)).to_have_text("1")
            await page.screenshot(path=shots / "routes.png", full_page=True)
            assert SECRET not in await page.content()
            listing = await asyncio.to_thread(
                _vebus, stack, "routes", "list", "--config", str(stack.config_path)
            )
            assert "PAUSED since" in listing.stdout, listing.stdout
            assert f"by {OPERATOR} (console)" in listing.stdout, listing.stdout
            await route.locator("button", has_text="Resume").click()
            await expect(page.locator(".flash.ok")).to_have_text("route vm-off resumed")
            listing = await asyncio.to_thread(
                _vebus, stack, "routes", "list", "--config", str(stack.config_path)
            )
            assert "PAUSED" not in listing.stdout, listing.stdout

            # ---- the other pages
            await page.goto(f"{base}/routes/vm-off")
            await page.fill("textarea[name=event]", copied)
            await page.click("form.stack button[type=submit]")
            await expect(page.locator(".result.match")).to_contain_text("matched: route vm-off")
            await page.screenshot(path=shots / "route.png", full_page=True)
            await page.goto(f"{base}/routes/edit")
            await page.screenshot(path=shots / "route-edit.png", full_page=True)
            await page.goto(f"{base}/status")
            await expect(page.locator("svg.chart")).to_be_visible()
            await page.screenshot(path=shots / "status.png", full_page=True)

            # ---- a viewer sees the pages without the buttons that change anything
            viewer = await browser.new_context(
                viewport={"width": 1440, "height": 900},
                extra_http_headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
            )
            vpage = await viewer.new_page()
            await vpage.goto(f"{base}/routes")
            await expect(vpage.locator("#route-vm-off")).to_be_visible()
            await expect(vpage.locator("#route-vm-off button")).to_have_count(0)
            await viewer.close()
        except Exception:
            await page.screenshot(path=shots / "failure.png", full_page=True)
            print(stack.logs())
            raise
        finally:
            await browser.close()
