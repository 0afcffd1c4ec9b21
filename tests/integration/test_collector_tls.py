"""TLS to vCenter: a simulator with a self-signed certificate is refused by default,
accepted with `ca_file`, and with `insecure: true` (which warns)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client
from pyVim.connect import SmartConnect

from tests.support.collector import readyz, start_replica, stream_keys, vcenter_state, wait_until
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.local.embedded import ManagedProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_vcsim(vcsim_binary: Path, tmp_path: Path) -> Iterator[Callable[[], tuple[str, Path]]]:
    """Starts simulators over HTTPS; each call returns a URL and the PEM of its self-signed
    certificate. (One follower per simulator: vcsim 0.24 sends property updates to the
    session that started waiting last.)"""
    procs: list[ManagedProcess] = []

    def start() -> tuple[str, Path]:
        port = free_port()
        cert = tmp_path / f"vcsim-{port}.pem"
        args = [str(vcsim_binary), "-listen", f"127.0.0.1:{port}", "-tls", "-cert-file", str(cert)]
        proc = ManagedProcess("vcsim-tls", args, tmp_path / f"vcsim-{port}.log").start()
        procs.append(proc)
        assert wait_for_port(port, timeout=30), proc.output()
        return f"https://127.0.0.1:{port}/sdk", cert

    yield start
    for proc in procs:
        proc.stop()


#: the simulator takes any password: one that cannot appear in a log by chance
SECRET = "Zq8-not-in-any-log"


def _vc(name: str, url: str, **extra: object) -> dict[str, object]:
    return {"name": name, "url": url, "username": "user", "password": SECRET, **extra}


async def test_a_self_signed_vcenter_is_refused_unless_trusted(
    stack: Stack, nc: Client, tls_vcsim: Callable[[], tuple[str, Path]]
) -> None:
    url, cert = tls_vcsim()
    lab_url, _ = tls_vcsim()
    stack.write_config(
        {
            "vcenters": [
                _vc("verified", url),
                _vc("private-ca", url, ca_file=str(cert)),
                _vc("lab", lab_url, insecure=True),
            ]
        }
    )
    port = start_replica(stack, "collector")
    proc = stack.procs["collector"]
    for name in ("private-ca", "lab"):
        await wait_until(
            lambda n=name: vcenter_state(port, n).get("state") == "tailing", 30, name, proc
        )
    await wait_until(
        lambda: "CERTIFICATE_VERIFY_FAILED" in str(vcenter_state(port, "verified").get("error")),
        30,
        "the default refuses the self-signed certificate",
        proc,
    )
    state = vcenter_state(port, "verified")
    assert "set ca_file" in state["error"]
    assert readyz(port)[0] == 503

    # with ca_file the events flow (over TLS, verified)
    vs = await asyncio.to_thread(_TlsVSphere, url, cert)
    try:
        await asyncio.to_thread(vs.post_events, 3, "over tls")
        newest = await asyncio.to_thread(vs.newest_key)
    finally:
        await asyncio.to_thread(vs.close)
    deadline = time.monotonic() + 30
    while newest not in await stream_keys(nc, "private-ca"):
        assert time.monotonic() < deadline, proc.output()[-3000:]
        await asyncio.sleep(0.2)
    assert not await stream_keys(nc, "verified")
    logs = proc.output()
    assert "vcenters[lab]: insecure: true: vCenter's TLS certificate is NOT verified" in logs
    assert SECRET not in logs, "no credential in the logs"


class _TlsVSphere(VSphere):
    """The test's own session with the HTTPS simulator, trusting its certificate."""

    def __init__(self, url: str, cert: Path) -> None:
        parts = urlsplit(url)
        self.si = SmartConnect(
            host=parts.hostname,
            port=parts.port,
            user="user",
            pwd="pass",
            protocol="https",
            sslContext=ssl.create_default_context(cafile=str(cert)),
        )
        self.content = self.si.RetrieveContent()
