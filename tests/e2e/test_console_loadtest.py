"""The console's benchmark in its short form runs end to end and writes its results (no
timing is asserted: the machines are shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.console import require_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]


def test_console_loadtest_short_form() -> None:
    require_chromium()
    out = REPO / "loadtest" / "results" / "console-short.json"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.console", "--short"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(out.read_text())
    live, history = doc["live"], doc["history"]
    assert live["published"] > 1000
    assert live["rows_max"] <= 200  # the page stays bounded
    assert live["sampling_notice"]  # 1,000/s is above live_rate: the page says so
    assert live["console_cpu_us_per_event"] > 0
    assert {row["search"] for row in history["searches"]} >= {"user (body)", "object (body)"}
    assert all(row["rows"] > 0 for row in history["searches"][:5])
    assert doc["machine"]["loadavg"]
