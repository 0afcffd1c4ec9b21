"""vCenter credentials: a wrong password is a clear error in the collector's log, /readyz
and `vebus status`, and the collector resumes by itself once `password_file` holds the
right one; a session vCenter ends (an expired or terminated session) is logged in again
without a gap. The simulator runs with its login flags: any other login is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from tests.support.collector import stream_keys, vcenter_state, wait_until
from tests.support.stack import Stack
from vebus.local.embedded import start_vcsim

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
USER, PASSWORD = "vebus-reader", "right-Pa55word"


def _post(url: str, n: int) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    si = SmartConnect(host=host, port=int(port), user=USER, pwd=PASSWORD, protocol="http")
    try:
        em = si.content.eventManager
        for i in range(n):
            event = vim.event.GeneralUserEvent(
                message=f"cred-{i}", createdTime=si.CurrentTime(), key=0, chainId=0, userName=""
            )
            em.PostEvent(event)
    finally:
        Disconnect(si)


def _terminate_other_sessions(url: str) -> int:
    """End every session but this one (as vCenter does when a session expires)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    si = SmartConnect(host=host, port=int(port), user=USER, pwd=PASSWORD, protocol="http")
    try:
        sm = si.content.sessionManager
        mine = sm.currentSession.key
        others = [s.key for s in sm.sessionList or [] if s.key != mine]
        if others:
            sm.TerminateSession(others)
        return len(others)
    finally:
        Disconnect(si)


async def test_a_wrong_password_is_reported_and_fixing_password_file_resumes(
    stack: Stack, nc: Client, vcsim_binary: Path, tmp_path: Path
) -> None:
    proc, url = start_vcsim(vcsim_binary, log_path=tmp_path / "vcsim.log", login=(USER, PASSWORD))
    try:
        secret = tmp_path / "vc-password"
        secret.write_text("wrong-password\n")
        stack.write_config({"vcenters": [{"name": "vc1", "url": url, "username": USER,
                                          "password_file": str(secret), "start": "earliest",
                                          "checkpoint_interval": "200ms"}]})  # fmt: skip
        stack.start_unready("collector")
        port = stack.health["collector"]
        collector = stack.procs["collector"]

        def refused() -> bool:
            s = vcenter_state(port, "vc1")
            return s.get("state") == "unreachable" and "refused" in str(s.get("error", ""))

        await wait_until(refused, 60, "the wrong password shown in /readyz", collector)
        error = vcenter_state(port, "vc1")["error"]
        assert USER in error, error  # names the account, never the password
        assert "wrong-password" not in collector.output()
        assert "refused" in collector.output()
        status = subprocess.run(
            [str(BIN / "vebus"), "status", "--json", "--config", str(stack.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "refused" in status.stdout, status.stdout[-2000:]

        # the operator fixes the file: the next login attempt reads it (no restart)
        secret.write_text(PASSWORD + "\n")
        await wait_until(lambda: vcenter_state(port, "vc1").get("state") == "tailing", 90,
                         "tailing after password_file was fixed", collector)  # fmt: skip
        assert collector.poll() is None

        # a session vCenter ends is logged in again; the events around it all arrive
        await asyncio.sleep(4)  # past the follower's RELOGIN_GRACE: an expired session
        before = len(await stream_keys(nc, "vc1"))
        _post(url, 5)
        assert _terminate_other_sessions(url) >= 1
        _post(url, 5)

        async def arrived() -> bool:
            return len(await stream_keys(nc, "vc1")) >= before + 10

        deadline = asyncio.get_running_loop().time() + 60
        while not await arrived():
            assert asyncio.get_running_loop().time() < deadline, collector.output()[-3000:]
            await asyncio.sleep(0.2)
        keys = await stream_keys(nc, "vc1")
        assert keys == sorted(set(keys)), "a key twice or out of order"
        await wait_until(lambda: vcenter_state(port, "vc1").get("state") == "tailing", 30,
                         "tailing again after the session ended", collector)  # fmt: skip
        assert "logging in again" in collector.output()
        assert json.dumps(vcenter_state(port, "vc1")).find(PASSWORD) == -1
    finally:
        proc.stop()
