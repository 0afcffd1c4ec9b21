"""`vebus up --nats-auth`: NATS takes only the users of deploy/nats/auth.conf, each service
logs in as its own, the `vebus` command finds the admin user without the operator copying
a password, and no generated password shows in a log, the written config or a command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml

from tests.e2e.test_up import BIN, _pids_of, _wait_for
from tests.support.ports import free_run

pytestmark = pytest.mark.e2e

SERVICES = ("collector", "filter", "dispatcher", "deadletter", "functions", "console")


def _vebus(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vebus"), *args], capture_output=True, text=True, timeout=60, check=False,
        cwd=cwd, env=env,
    )  # fmt: skip


async def _refused(url: str, **login: str) -> str:
    """The error a NATS connection gets, or "" when it is let in."""
    errors: list[Exception] = []

    async def collect(e: Exception) -> None:
        errors.append(e)

    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1,
                                connect_timeout=2, error_cb=collect, **login)  # fmt: skip
    except (nats.errors.Error, OSError) as e:
        return " ".join(str(x) for x in (*errors, e))
    await nc.close()
    return ""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


# the cluster form (16 s) runs with `-m slow`; the default suite keeps the one-node form
@pytest.mark.parametrize(
    "nodes", [1, pytest.param(3, marks=pytest.mark.slow)], ids=["one-node", "three-node-cluster"]
)
def test_up_with_nats_auth_logs_every_service_in_as_its_own_user(
    tmp_path: Path, vcsim_binary: Path, nodes: int
) -> None:
    nats_port = free_run(nodes)  # a cluster's nodes listen on the ports after the first
    vcsim_port = next(
        p for p in iter(lambda: free_run(1), 0) if not nats_port <= p < nats_port + nodes
    )
    data = tmp_path / ".vebus"  # the default data dir, where the vebus command looks
    url = f"nats://127.0.0.1:{nats_port}"
    log = tmp_path / "up.log"
    env = dict(os.environ, VEBUS_VCSIM=str(vcsim_binary), PYTHONUNBUFFERED="1")
    for name in ("VEBUS_NATS_USER", "VEBUS_NATS_PASSWORD"):
        env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "vebus"), "up", "--nats-auth", "--nats-cluster", str(nodes),
             "--nats-port", str(nats_port), "--vcsim-port", str(vcsim_port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        # delivered end to end: collector -> filter -> dispatcher's console route
        out = _wait_for(log, "com.vmware.vsphere.VmPoweredOnEvent.v0", 60, proc)
        assert "dispatcher |" in out
        assert f"passwords in {data.resolve() / 'nats-auth.env'}" in out

        auth_file = data / "nats-auth.env"
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        passwords = dict(
            line.split("=", 1)
            for line in auth_file.read_text().splitlines()
            if line and not line.startswith("#")
        )
        users = {k.removeprefix("VEBUS_NATS_").removesuffix("_PASSWORD").lower(): v
                 for k, v in passwords.items()}  # fmt: skip
        assert set(users) == {*SERVICES, "subscriber", "admin"}

        # NATS lets nobody in without a login, on every node
        for port in range(nats_port, nats_port + nodes):
            node = f"nats://127.0.0.1:{port}"
            assert "Authorization Violation" in asyncio.run(_refused(node))
            assert "Authorization Violation" in asyncio.run(
                _refused(node, user="admin", password="wrong")
            )
        assert asyncio.run(_refused(url, user="admin", password=users["admin"])) == ""

        # each service process has its own user and password, and no other's
        config = str(data.resolve() / "vebus.yaml")
        for name in SERVICES:
            (pid,) = [p for p in _pids_of(f"vebus_{name}") if p in _pids_of(config)]
            own = _environ(pid)
            assert own["VEBUS_NATS_USER"] == name
            assert own["VEBUS_NATS_PASSWORD"] == users[name]
            others = [pw for user, pw in users.items() if user != name]
            assert not any(pw in own.values() for pw in others), name

        # the vebus command in the folder `vebus up` ran in logs in as admin by itself
        status = _vebus("status", "--nats-url", url, cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert "VEBUS_EVENTS" in status.stdout
        assert "collector" in status.stdout
        # elsewhere it says what to do; with the documented variables it works
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        refused = _vebus("routes", "list", "--nats-url", url, cwd=elsewhere, env=env)
        assert refused.returncode == 1
        assert "refused a connection without a user" in refused.stderr
        assert "nats-auth.env" in refused.stderr
        assert "VEBUS_NATS_USER=admin" in refused.stderr
        assert "Traceback" not in refused.stderr
        admin_env = dict(env, VEBUS_NATS_USER="admin", VEBUS_NATS_PASSWORD=users["admin"])
        listed = _vebus("routes", "list", "--nats-url", url, cwd=elsewhere, env=admin_env)
        assert listed.returncode == 0, listed.stderr
        assert "console" in listed.stdout

        # no generated password is on a command line
        for pid in _pids_of(str(data.resolve())):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert not any(pw in cmdline for pw in users.values()), cmdline
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert _pids_of(str(data.resolve())) == [], "nats-server and the services stopped"

    # nor in anything written: logs, the effective config, the generated server config
    effective = yaml.safe_load((data / "vebus.yaml").read_text())
    assert effective["nats"]["user"] == "${VEBUS_NATS_USER}"
    assert effective["nats"]["password"] == "${VEBUS_NATS_PASSWORD}"
    written = [log, data / "vebus.yaml", data / "nats-server.conf", *(data / "logs").iterdir()]
    for path in written:
        text = path.read_text(errors="replace")
        leaked = [user for user, pw in users.items() if pw in text]
        assert not leaked, f"{path} holds the password of {leaked}"
        assert "permissions violation" not in text.lower(), path


def test_nats_auth_with_a_remote_nats_is_refused(tmp_path: Path) -> None:
    """--nats-auth secures the nats-server `vebus up` starts; a remote one has its own users."""
    cfg = tmp_path / "vebus.yaml"
    remote = {"url": "nats://nats.example.com:4222", "user": "u", "password": "${NATS_PW}"}
    cfg.write_text(yaml.safe_dump({"nats": remote}))
    started = time.monotonic()
    proc = _vebus("up", "--nats-auth", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "--nats-auth" in proc.stderr
    assert "nats.url nats://nats.example.com:4222 is a server vebus up does not start" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".vebus").exists(), "nothing was started"
    assert time.monotonic() - started < 30
