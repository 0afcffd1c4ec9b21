"""A service on a NATS that requires TLS and verifies clients (`nats.tls`): with the CA and
its client certificate it runs; without the CA, or without a certificate, it stops at once
with exit status 2 and a line that names the cause, instead of retrying for ever."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vebus.local.embedded import ManagedProcess, free_port, start_nats, start_service
from vebus.local.tls import LocalTls, ensure_local_tls

pytestmark = pytest.mark.integration


class TlsNats:
    def __init__(self, proc: ManagedProcess, url: str, tls: LocalTls) -> None:
        self.proc, self.url, self.tls = proc, url, tls


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[TlsNats]:
    tls = ensure_local_tls(tmp_path / "tls")
    proc, port = start_nats(
        tmp_path / "js",
        extra_args=["--tlsverify", "--tlscert", str(tls.server_cert), "--tlskey",
                    str(tls.server_key), "--tlscacert", str(tls.ca_file)],
    )  # fmt: skip
    yield TlsNats(proc, f"nats://127.0.0.1:{port}", tls)
    proc.kill()


def _run(tmp_path: Path, nats: dict[str, Any], name: str) -> ManagedProcess:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"nats": nats}))
    return start_service("filter", config, health_port=free_port(),
                         log_path=tmp_path / f"{name}.log")  # fmt: skip


def _exit_status(proc: ManagedProcess, timeout: float = 20.0) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.poll()


def test_a_service_needs_the_ca_and_its_certificate_and_says_which_is_missing(
    tls_nats: TlsNats, tmp_path: Path
) -> None:
    tls = tls_nats.tls
    cases = {
        "no-ca": ({}, "certificate is not trusted", "nats.tls.ca_file"),
        "no-cert": ({"ca_file": str(tls.ca_file)}, "verifies clients", "nats.tls.cert_file"),
    }
    procs = {name: _run(tmp_path, {"url": tls_nats.url, "tls": t}, name)
             for name, (t, _, _) in cases.items()}  # fmt: skip
    for name, (_, cause, fix) in cases.items():
        proc = procs[name]
        assert _exit_status(proc) == 2, f"{name}:\n{proc.output()[-2000:]}"
        out = proc.output()
        assert cause in out, out[-2000:]
        assert fix in out, out[-2000:]
        assert "Traceback" not in out

    full = {"ca_file": str(tls.ca_file), "cert_file": str(tls.client_cert),
            "key_file": str(tls.client_key)}  # fmt: skip
    ok = _run(tmp_path, {"url": tls_nats.url, "tls": full}, "full")
    try:
        deadline = time.monotonic() + 30
        while "filtering with" not in ok.output():
            assert ok.poll() is None, ok.output()[-2000:]
            assert time.monotonic() < deadline, ok.output()[-2000:]
            time.sleep(0.2)
    finally:
        ok.stop()
