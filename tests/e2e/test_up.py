"""`vebus up` as a user runs it: the simulator's events on the console, `vebus demo` makes
VmPoweredOffEvent lines, a dead service is restarted, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vebus.local.embedded import free_port

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _wait_for(log: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace")
        if text in out:
            return out
        if proc.poll() is not None:
            raise AssertionError(f"vebus up exited ({proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not printed in {timeout}s:\n{log.read_text()[-3000:]}")


def _pids_of(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def _console_answers(out: str, data: Path) -> None:
    """The console's address is printed, on loopback, and its generated token signs in."""
    import re
    import urllib.request

    m = re.search(r"console at (http://127\.0\.0\.1:\d+/)", out)
    assert m, out[-3000:]
    token = next(
        line.split("=", 1)[1]
        for line in (data / "console.env").read_text().splitlines()
        if line.startswith("VEBUS_CONSOLE_TOKEN=")
    )
    request = urllib.request.Request(
        m.group(1) + "routes", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
        assert "console" in r.read().decode()


def test_up_shows_events_restarts_services_and_stops_cleanly(
    tmp_path: Path, vcsim_binary: Path
) -> None:
    nats_port, vcsim_port = free_port(), free_port()
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    env = dict(os.environ, VEBUS_VCSIM=str(vcsim_binary), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "vebus"), "up", "--data-dir", str(data),
             "--nats-port", str(nats_port), "--vcsim-port", str(vcsim_port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        # the simulator's start-up events reach the console route within a minute
        _wait_for(log, "com.vmware.vsphere.VmPoweredOnEvent.v0", 60, proc)

        demo = subprocess.run(
            [str(BIN / "vebus"), "demo", "--url", f"http://127.0.0.1:{vcsim_port}/sdk",
             "--vms", "1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stderr
        assert "powered off" in demo.stdout
        out = _wait_for(log, "com.vmware.vsphere.VmPoweredOffEvent.v0", 30, proc)
        assert "dispatcher |" in out
        _console_answers(out, data)

        # a service that dies is restarted
        config = str(data.resolve() / "vebus.yaml")
        (filter_pid,) = [p for p in _pids_of("vebus_filter") if p in _pids_of(config)]
        os.kill(filter_pid, signal.SIGKILL)
        _wait_for(log, "filter exited with status -9", 30, proc)
        deadline = time.monotonic() + 30
        while not [p for p in _pids_of("vebus_filter") if p in _pids_of(config)]:
            assert time.monotonic() < deadline, "filter was not restarted"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert status == 0, log.read_text()[-3000:]
    assert _pids_of(str(data.resolve())) == [], "nats-server and the services stopped"
    assert _pids_of(f"-listen 127.0.0.1:{vcsim_port}") == [], "the simulator stopped"
