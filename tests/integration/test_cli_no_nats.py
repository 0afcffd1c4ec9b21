"""Every command that needs NATS says in one line that it cannot reach it, and exits.

nats-py's first connect retries forever when told `max_reconnect_attempts=0`, printing a
traceback per attempt: a command pointed at the wrong URL used to hang like that.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [
        ["tail"],
        ["status"],
        ["dlq", "list"],
        ["routes", "list"],
        ["stats", "--since", "1h"],
    ],
    ids=lambda a: " ".join(a),
)
def test_an_unreachable_nats_is_one_line_and_exit_1(args: list[str], tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        [str(VEBUS), *args, "--nats-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert f"cannot connect to NATS at {url}" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s to give up"
