"""`vebus up --nats-tls`: TLS on every NATS connection, clients and cluster routes, each side
verified against a local CA; the services and the `vebus` command present a client
certificate by themselves; a client without one, or one that does not trust the CA, is
refused with an error that names the cause.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_up import BIN, _pids_of, _wait_for
from tests.e2e.test_up_auth import _vebus
from tests.support.ports import free_run
from vebus.config import NatsConfig, NatsTls
from vebus.runtime.connect import ConnectFailedError, connect_once

pytestmark = pytest.mark.e2e


async def _connect(url: str, tls: NatsTls | None) -> str:
    """The error a connection gets, or "" when it is let in."""
    try:
        nc = await connect_once(NatsConfig(url=url, tls=tls), url=url, user=None,
                                password=None, name="test")  # fmt: skip
    except ConnectFailedError as e:
        return e.reason
    await nc.close()
    return ""


def test_up_with_nats_tls_verifies_both_sides_on_clients_and_routes(
    tmp_path: Path, vcsim_binary: Path
) -> None:
    nodes = 3  # the routes between the nodes are TLS too
    nats_port = free_run(nodes)
    vcsim_port = next(
        p for p in iter(lambda: free_run(1), 0) if not nats_port <= p < nats_port + nodes
    )
    data = tmp_path / ".vebus"
    url = f"nats://127.0.0.1:{nats_port}"
    log = tmp_path / "up.log"
    env = dict(os.environ, VEBUS_VCSIM=str(vcsim_binary), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "vebus"), "up", "--nats-tls", "--nats-cluster", str(nodes),
             "--nats-port", str(nats_port), "--vcsim-port", str(vcsim_port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        # delivered end to end over TLS, on a three-node cluster whose routes are TLS
        out = _wait_for(log, "com.vmware.vsphere.VmPoweredOnEvent.v0", 90, proc)
        assert "dispatcher |" in out
        assert "NATS TLS" in out

        tls = data / "tls"
        for key in ("ca-key.pem", "server-key.pem", "client-key.pem"):
            assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600, key
        effective = yaml.safe_load((data / "vebus.yaml").read_text())
        assert effective["nats"]["tls"]["ca_file"] == str((tls / "ca.pem").resolve())

        full = NatsTls(ca_file=str(tls / "ca.pem"), cert_file=str(tls / "client.pem"),
                       key_file=str(tls / "client-key.pem"))  # fmt: skip
        for port in range(nats_port, nats_port + nodes):
            node = f"nats://127.0.0.1:{port}"
            assert asyncio.run(_connect(node, full)) == ""
            # a client that does not trust the CA, and one without a certificate
            assert "certificate is not trusted" in asyncio.run(_connect(node, None))
            no_cert = asyncio.run(_connect(node, NatsTls(ca_file=str(tls / "ca.pem"))))
            assert "cert_file" in no_cert, no_cert

        # the vebus command in the folder `vebus up` ran in finds the certificates by itself
        status = _vebus("status", "--nats-url", url, cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert "VEBUS_EVENTS" in status.stdout
        # elsewhere it says what is wrong, in one line
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        refused = _vebus("routes", "list", "--nats-url", url, cwd=elsewhere, env=env)
        assert refused.returncode == 1
        assert "certificate is not trusted" in refused.stderr
        assert "nats.tls.ca_file" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert _pids_of(str(data.resolve())) == [], "nats-server and the services stopped"
    logs = "".join(p.read_text(errors="replace") for p in (data / "logs").iterdir())
    assert "Traceback" not in logs
