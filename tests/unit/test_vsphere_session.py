"""vebus.vsphere: the TLS policy, password_file, the login's errors and timeout, re-login on
NotAuthenticated, and the session pool (pyvmomi's login replaced by a fake where noted;
TLS against the simulator is in tests/integration/test_collector_tls.py and
test_sink_vsphere.py)."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vim

from tests.support.sink import self_signed_cert
from vebus.config import VCenterEndpoint
from vebus.errors import ConfigError, PermanentError, RetryableError
from vebus.vsphere import (
    Session,
    SessionPool,
    VCenterCertificateError,
    VCenterConnectionError,
    VCenterLoginError,
    read_password,
    ssl_context,
    tls_notice,
)
from vebus.vsphere import _session as session_module


def _ep(url: str = "https://127.0.0.1:8443/sdk", **extra: Any) -> VCenterEndpoint:
    fields: dict[str, Any] = {"url": url, "username": "u", "password": "p", **extra}
    return VCenterEndpoint(**fields)


# ------------------------------------------------------------------------ TLS policy


def test_the_default_verifies_against_the_systems_cas() -> None:
    ctx = ssl_context(_ep(), "vcenters[vc1]")
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert (
        ctx.cert_store_stats()["x509_ca"]
        == ssl.create_default_context().cert_store_stats()["x509_ca"]
    )


def test_ca_file_verifies_against_that_ca_only(tmp_path: Path) -> None:
    cert, _ = self_signed_cert(tmp_path)
    ctx = ssl_context(_ep(ca_file=str(cert)), "vcenters[vc1]")
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_ca_file_that_is_not_pem_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"^vcenters\[vc1\]\.ca_file '.*ca\.pem': cannot load"):
        ssl_context(_ep(ca_file=str(path)), "vcenters[vc1]")


def test_insecure_verifies_nothing_and_says_what_that_exposes() -> None:
    ctx = ssl_context(_ep(insecure=True), "routes[r].sink")
    assert ctx.verify_mode == ssl.CERT_NONE
    assert not ctx.check_hostname
    notice = tls_notice(_ep(insecure=True), "routes[r].sink")
    assert notice is not None
    level, text = notice
    assert level == logging.WARNING
    assert text.startswith("routes[r].sink: insecure: true: vCenter's TLS certificate is NOT")
    assert "read the username, the password" in text
    assert "ca_file" in text
    assert tls_notice(_ep(), "x") is None
    plain = tls_notice(_ep("http://127.0.0.1:8989/sdk"), "x")
    assert plain is not None
    assert plain[0] == logging.INFO


def test_a_context_that_verifies_is_handed_to_pyvmomi_even_for_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given no context, pyvmomi verifies nothing for localhost/127.0.0.1/::1."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(session_module, "_api_version", lambda *a: "vim.version.v6_5")
    monkeypatch.setattr(
        session_module.pyvim_connect, "Connect", lambda **kw: calls.append(kw) or _fake_si()
    )
    for url in ("https://localhost/sdk", "https://127.0.0.1:8443/sdk", "http://[::1]:8989/sdk"):
        Session(_ep(url), where="x", timeout=7).login()
    assert [c["port"] for c in calls] == [443, 8443, -8989]  # pyvmomi: negative = plain HTTP
    for c in calls:
        assert isinstance(c["sslContext"], ssl.SSLContext)
        assert c["sslContext"].verify_mode == ssl.CERT_REQUIRED
        assert c["httpConnectionTimeout"] == 7
        assert c["version"] == "vim.version.v6_5"


# --------------------------------------------------------------------- password_file


def test_password_file_is_read_at_each_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("first\n")
    used: list[str] = []
    monkeypatch.setattr(session_module, "connect", lambda ep, pw, *a: used.append(pw) or _fake_si())
    session = Session(_ep(password="", password_file=str(secret)), where="vcenters[vc1]")
    session.login()
    secret.write_text("rotated\r\n")
    session.login()
    assert used == ["first", "rotated"]
    assert read_password(_ep(), "x") == "p"


@pytest.mark.parametrize(("content", "reason"), [(None, "cannot read it"), ("\n", "it is empty")])
def test_an_unusable_password_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    ep = _ep(password="", password_file=str(path))
    with pytest.raises(ConfigError, match=rf"^routes\[r\]\.sink\.password_file '.*pw': {reason}"):
        read_password(ep, "routes[r].sink")


# ----------------------------------------------------------------------- login errors


@pytest.mark.parametrize(
    ("raised", "error", "kind", "text"),
    [
        (vim.fault.InvalidLogin(msg="bad"), VCenterLoginError, PermanentError,
         "refused the login of 'u' (bad): check username and password"),
        (ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed"),
         VCenterCertificateError, PermanentError,
         "not trusted: [SSL: CERTIFICATE_VERIFY_FAILED] self-signed (set ca_file"),
        (ConnectionRefusedError(111, "Connection refused"), VCenterConnectionError,
         RetryableError, "cannot connect: ConnectionRefusedError(111, 'Connection refused')"),
    ],
)  # fmt: skip
def test_login_errors_say_what_to_do_and_whether_to_retry(
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    error: type[Exception],
    kind: type[Exception],
    text: str,
) -> None:
    def fail(*_: Any) -> Any:
        raise raised

    monkeypatch.setattr(session_module, "_api_version", fail)
    with pytest.raises(error) as e:
        Session(_ep(), where="vcenters[vc1]").login()
    assert isinstance(e.value, kind)
    assert str(e.value).startswith("vcenters[vc1]: https://127.0.0.1:8443/sdk: ")
    assert text in str(e.value)
    assert "'p'" not in str(e.value), "never the password"


def test_a_vcenter_that_never_answers_fails_the_login_within_the_timeout() -> None:
    """pyvmomi's SmartConnect would wait for ever for the API versions."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(VCenterConnectionError, match="timed out"):
            Session(_ep(f"http://127.0.0.1:{port}/sdk"), where="x", timeout=0.3).login()
        assert time.monotonic() - started < 2


# ------------------------------------------------------------- re-login on expiry


class FakeVCenter:
    """Logins hand out numbered fake ServiceInstances; `expired` ones raise NotAuthenticated."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.logins = 0
        self.logouts = 0
        self.expired: set[int] = set()
        self.lock = threading.Lock()
        monkeypatch.setattr(session_module, "connect", self.connect)
        monkeypatch.setattr(session_module.pyvim_connect, "Disconnect", self.disconnect)

    def connect(self, *_: Any) -> Any:
        with self.lock:
            self.logins += 1
            return _fake_si(self.logins)

    def disconnect(self, si: Any) -> None:
        self.logouts += 1

    def call(self, si: Any) -> int:
        if si.n in self.expired:
            raise vim.fault.NotAuthenticated(msg="expired")
        return int(si.n)


def _fake_si(n: int = 1) -> Any:
    about = SimpleNamespace(apiVersion="6.5", fullName=f"fake vCenter {n}")
    return SimpleNamespace(n=n, content=SimpleNamespace(about=about))


def test_an_expired_session_logs_in_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    vc = FakeVCenter(monkeypatch)
    session = Session(_ep(), where="x")
    assert session.run(vc.call) == 1
    vc.expired.add(1)
    assert session.run(vc.call) == 2
    assert (vc.logins, vc.logouts, session.logins) == (2, 1, 2)
    vc.expired.add(2)
    vc.expired.add(3)  # refused right after a new login too: raised, not a loop
    with pytest.raises(vim.fault.NotAuthenticated):
        session.run(vc.call)
    assert vc.logins == 3


def test_threads_that_find_the_session_expired_together_log_in_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vc = FakeVCenter(monkeypatch)
    session = Session(_ep(), where="x")
    session.run(vc.call)
    vc.expired.add(1)
    barrier = threading.Barrier(4)
    results: list[int] = []

    def call(si: Any) -> int:
        if si.n == 1:
            barrier.wait(5)  # all four saw the old session before any logs in again
        return vc.call(si)

    threads = [threading.Thread(target=lambda: results.append(session.run(call))) for _ in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [2, 2, 2, 2]
    assert vc.logins == 2


def test_the_pool_lends_each_session_to_one_caller_and_keeps_it_logged_in(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vc = FakeVCenter(monkeypatch)
    monkeypatch.setattr(Session, "is_valid", lambda self: self.si.n not in vc.expired)
    caplog.set_level(logging.WARNING)
    pool = SessionPool(_ep(insecure=True), where="vcenters[vc1]", size=2, check_idle=0.0)
    with pool.session() as a, pool.session() as b:
        assert {a.si.n, b.si.n} == {1, 2}
        with pytest.raises(TimeoutError, match="all 2 vCenter sessions are in use"):
            pool.run(lambda s: s.si.n, wait=0.05)
    lent = [pool.run(lambda s: s.run(vc.call)) for _ in range(5)]
    assert len(set(lent)) == 1
    assert vc.logins == 2, "sessions are kept between loans"
    vc.expired.add(lent[0])
    assert pool.run(lambda s: s.si.n) == 3, "a stale idle session is logged in again"
    pool.close()
    assert vc.logouts == 3
    warnings = [r for r in caplog.records if "NOT verified" in r.getMessage()]
    assert len(warnings) == 1, "the TLS warning once per pool"


def test_the_services_without_vcenter_import_no_pyvmomi() -> None:
    """pyvmomi is the `vebus[vsphere]` extra: the filter's image does not carry it, and the
    dispatcher imports it only for a vsphere sink."""
    code = (
        "import sys, vebus.config, vebus.cli, vebus_filter.app, vebus_deadletter.app, "
        "vebus_dispatcher.app, vebus_dispatcher.sinks.vsphere; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyVmomi', 'pyVim')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
