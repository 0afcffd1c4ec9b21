"""TLS to vCenter: a simulator with a self-signed certificate is refused by default,
accepted with `ca_file`, and with `insecure: true` (which warns)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.support.collector import readyz, start_replica, stream_keys, vcenter_state, wait_until
from tests.support.stack import Stack
from tests.support.vsphere import VSphere

pytestmark = pytest.mark.integration


#: the simulator takes any password: one that cannot appear in a log by chance
SECRET = "Zq8-not-in-any-log"


def _vc(name: str, url: str, **extra: object) -> dict[str, object]:
    return {"name": name, "url": url, "username": "user", "password": SECRET, **extra}


async def test_a_self_signed_vcenter_is_refused_unless_trusted(
    stack: Stack, nc: Client, tls_vcsim: Callable[[], tuple[str, Path]]
) -> None:
    url, cert = tls_vcsim()  # one simulator, two followers: each on its own PropertyCollector
    stack.write_config(
        {
            "vcenters": [
                _vc("verified", url),
                _vc("private-ca", url, ca_file=str(cert)),
                _vc("lab", url, insecure=True),
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

    # with ca_file the events flow (over TLS, verified); and unverified to the lab follower
    vs = await asyncio.to_thread(VSphere, url, str(cert))
    try:
        await asyncio.to_thread(vs.post_events, 3, "over tls")
        newest = await asyncio.to_thread(vs.newest_key)
    finally:
        await asyncio.to_thread(vs.close)
    deadline = time.monotonic() + 30
    for name in ("private-ca", "lab"):
        while newest not in await stream_keys(nc, name):
            assert time.monotonic() < deadline, proc.output()[-3000:]
            await asyncio.sleep(0.2)
    assert not await stream_keys(nc, "verified")
    logs = proc.output()
    assert "vcenters[lab]: insecure: true: vCenter's TLS certificate is NOT verified" in logs
    assert SECRET not in logs, "no credential in the logs"
