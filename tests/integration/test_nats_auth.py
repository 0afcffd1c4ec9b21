"""NATS security: each service logs in as its own user with only the permissions it needs
(deploy/nats/auth.conf, the file compose and Kubernetes use), and wrong credentials are a
clear error, not a retry loop."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from tests.conftest import Vcsim
from tests.e2e.test_flow import _power_off_first_vm
from tests.support.auth import PASSWORDS, AuthNats
from tests.support.sink import RecordingSink
from vebus.local.embedded import ManagedProcess, free_port, start_service

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("collector", "filter", "dispatcher", "deadletter", "functions")


def _wait_ready(proc: ManagedProcess, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.output()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout}s:\n{proc.output()[-3000:]}")


def _write_config(path: Path, url: str, extra: dict[str, object]) -> Path:
    cfg = {"nats": {"url": url, "user": "${NATS_USER}", "password": "${NATS_PASSWORD}"}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _service_env(name: str, password: str | None = None) -> dict[str, str]:
    return dict(os.environ, NATS_USER=name, NATS_PASSWORD=password or PASSWORDS[name])


async def test_every_service_works_with_its_own_least_privilege_user(
    auth_nats: AuthNats, vcsim: Vcsim, sink: RecordingSink, tmp_path: Path
) -> None:
    (tmp_path / "fns.py").write_text("def echo(event, ctx):\n    return {'vm': event.data['Vm']}\n")
    cfg = _write_config(
        tmp_path / "vebus.yaml",
        auth_nats.url,
        {
            "vcenters": [{"name": "vc1", "url": vcsim.url, "username": "user", "password": "pass"}],
            # the functions service as its user: a reply published on its own subject
            "functions": [{"name": "echo", "python": "fns.py:echo"}],
            # every KV bucket is written as its service's user: the check's open conditions
            # (collector), the rate schedule (dispatcher), checkpoints, leases, routes
            "checks": [
                {"kind": "datastore_usage", "name": "ds-used", "threshold": 0, "interval": "1s"}
            ],
            "routes": [
                {
                    "name": "vm-off",
                    "match": {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
                    "sink": {"kind": "webhook", "url": sink.url},
                },
                {
                    "name": "vm-off-fn",
                    "match": {"type": ["com.vmware.vsphere.VmPoweredOffEvent.v0"]},
                    "sink": {"kind": "function", "function": "echo"},
                },
                {
                    "name": "echo-replies",
                    "match": {"source": ["vebus://functions/echo"]},
                    "sink": {"kind": "webhook", "url": sink.url},
                },
                {
                    "name": "checks",
                    "match": {"type": [{"prefix": "com.vebus.check."}]},
                    "sink": {"kind": "webhook", "url": sink.url},
                    "delivery": {"rate": 50},
                },
            ],
        },
    )
    ports = {name: free_port() for name in SERVICES}
    procs = [
        start_service(
            name,
            cfg,
            health_port=ports[name],
            log_path=tmp_path / f"{name}.log",
            env=_service_env(name),
        )
        for name in SERVICES
    ]
    try:
        # ready = each created its streams, consumers and buckets as its own user
        for name, p in zip(SERVICES, procs, strict=True):
            await asyncio.to_thread(_wait_ready, p, ports[name])
        name, _ = await _power_off_first_vm(vcsim)

        def of_type(suffix: str) -> list[dict[str, Any]]:
            return [json.loads(r.body) for r in sink.accepted
                    if r.headers.get("ce-type", "").endswith(suffix)]  # fmt: skip

        def seen() -> tuple[bool, bool, bool]:
            return (any(b["Vm"]["Name"] == name for b in of_type(".VmPoweredOffEvent.v0")),
                    bool(of_type(".DatastoreUsageExceeded.v0")),
                    any(b["vm"]["Name"] == name for b in of_type(".function.echo.v0")))  # fmt: skip

        delivered = await sink.wait_for(lambda: all(seen()), timeout=60)
        assert delivered, (seen(), "\n".join(p.output()[-2000:] for p in procs))
        logs = "\n".join(p.output() for p in procs)
        assert "permissions violation" not in logs.lower()
    finally:
        for p in procs:
            assert p.stop() == 0, p.output()[-2000:]


def test_wrong_credentials_exit_with_a_clear_message(auth_nats: AuthNats, tmp_path: Path) -> None:
    cfg = _write_config(tmp_path / "vebus.yaml", auth_nats.url, {})
    proc = start_service("filter", cfg, health_port=free_port(), log_path=tmp_path / "f.log",
                         env=_service_env("filter", password="wrong"))  # fmt: skip
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() == 2, proc.output()
    out = proc.output()
    assert "refused user 'filter'" in out
    assert "check nats.user and nats.password" in out
    assert "Traceback" not in out
    assert "wrong" not in out, "the password is never printed"


async def test_the_filter_user_cannot_publish_events(auth_nats: AuthNats) -> None:
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    admin = await nats.connect(auth_nats.url, user="admin", password=PASSWORDS["admin"])
    js = admin.jetstream()
    await js.add_stream(name="VEBUS_EVENTS", subjects=["vebus.events.>"])
    await js.add_stream(name="VEBUS_ROUTES", subjects=["vebus.routes.>"])
    filt = await nats.connect(auth_nats.url, user="filter", password=PASSWORDS["filter"],
                              error_cb=on_error)  # fmt: skip
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await filt.jetstream().publish("vebus.events.vc1.VmPoweredOffEvent", b"{}", timeout=1)
        await filt.flush()
        assert any("permissions violation" in str(e).lower() for e in errors), errors
        assert (await js.stream_info("VEBUS_EVENTS")).state.messages == 0
        # what the filter is for still works
        ack = await filt.jetstream().publish("vebus.routes.r1", b"{}")
        assert ack.stream == "VEBUS_ROUTES"
    finally:
        await filt.close()
        await admin.close()
