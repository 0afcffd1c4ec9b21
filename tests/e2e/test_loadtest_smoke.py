"""The benchmark runner's short forms: every scenario runs end to end and writes its results.

No timing is asserted (the machines are shared and noisy): the test fails only if a
scenario breaks (a service that does not start, events that never reach the sink, a
results file or chart that is not written).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from loadtest.scenarios import SCENARIOS

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "loadtest" / "results"


def test_every_scenario_short_form_runs_and_writes_its_results() -> None:
    for name in SCENARIOS:
        for ext in ("json", "png"):
            (RESULTS / f"{name}-short.{ext}").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--short"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, out
    for name in SCENARIOS:
        doc = json.loads((RESULTS / f"{name}-short.json").read_text())
        assert doc["short"] is True
        assert doc["rows"], f"{name}: no results rows\n{out}"
        assert {"met", "figure"} <= set(doc["goal"]), name
        assert doc["machine"]["nproc"], name
        assert doc["machine"]["git_commit"], name
        assert doc["settings"]["streams"], f"{name}: the stream settings were not recorded"
        assert (RESULTS / f"{name}-short.png").stat().st_size > 0, name
        assert f"goal: {doc['goal']['goal']}" in result.stdout, name


def test_the_runner_names_an_unknown_scenario() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "latencyy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown scenario(s) latencyy: expected any of latency, throughput" in result.stderr
    assert "Traceback" not in result.stderr
