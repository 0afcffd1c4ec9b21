"""The collector benchmark runs (its --short form) and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_the_collector_benchmark_short_form_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.collector", "--short"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ratios (same run, same simulator)" in result.stdout
    doc = json.loads((REPO / "loadtest" / "results" / "collector-short.json").read_text())
    run = doc["follow"][0]
    assert run["collector"]["seen"] == run["raw"]["seen"] == run["events"]
    assert doc["publish_path"][1]["msgs_per_s"] > 0
