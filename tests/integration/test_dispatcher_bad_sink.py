"""A config-file route whose sink cannot be built where the dispatcher runs is the user's
mistake: the dispatcher says which route and why, and exits 2 (as for a bad config file)
instead of running without that route or exiting 1 like a crash."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from vebus.local.embedded import free_port, start_nats, start_service

pytestmark = pytest.mark.integration


def test_an_eventbridge_route_without_a_region_stops_the_dispatcher_with_exit_2(
    tmp_path: Path,
) -> None:
    nats_proc, port = start_nats(tmp_path / "js")
    config = tmp_path / "vebus.yaml"
    config.write_text(yaml.safe_dump({
        "nats": {"url": f"nats://127.0.0.1:{port}"},
        "routes": [
            {"name": "fine", "sink": {"kind": "console"}},
            {"name": "to-aws", "sink": {"kind": "eventbridge", "event_bus": "default"}},
        ],
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    proc = start_service(
        "dispatcher", config, health_port=free_port(), log_path=tmp_path / "d.log", env=env
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.2)
        out = proc.output()
        assert proc.poll() == 2, out[-3000:]
        assert "route to-aws: sink.region: not set" in out
        assert "Traceback" not in out
    finally:
        proc.kill()
        nats_proc.kill()
