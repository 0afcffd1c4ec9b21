"""The project's vCenter simulator (deploy/vcsim) takes the login it must require, as compose.yaml
runs it: -username/-password or $VCSIM_USERNAME/$VCSIM_PASSWORD let that login in and refuse
any other with InvalidLogin; without them any non-empty login is let in (the other tests
and `vebus up` rely on that). Needs no Docker: the binary of build/vcsim."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

pytestmark = pytest.mark.integration


def _without_login_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VCSIM_USERNAME", "VCSIM_PASSWORD")}


@contextmanager
def _vcsim(
    binary: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """The simulator on a free port; yields its port and PID."""
    proc = subprocess.Popen(
        [str(binary), "-listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_without_login_env(), **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("VCSIM_URL="), (
            f"{line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
        port = urlsplit(line.strip().split("=", 1)[1]).port
        assert port
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _login(port: int, user: str, password: str) -> None:
    si = SmartConnect(host="127.0.0.1", port=port, user=user, pwd=password, protocol="http")
    Disconnect(si)


def test_flags_let_in_that_login_only(vcsim_binary: Path) -> None:
    with _vcsim(vcsim_binary, "-username", "ops", "-password", "s3cret") as (port, _):
        _login(port, "ops", "s3cret")
        for user, password in (("ops", "wrong"), ("user", "pass"), ("other", "s3cret")):
            with pytest.raises(vim.fault.InvalidLogin):
                _login(port, user, password)


def test_the_environment_gives_the_login_and_keeps_it_off_the_command_line(
    vcsim_binary: Path,
) -> None:
    env = {"VCSIM_USERNAME": "ops", "VCSIM_PASSWORD": "from-env"}
    with _vcsim(vcsim_binary, env=env) as (port, pid):
        assert b"from-env" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        _login(port, "ops", "from-env")
        with pytest.raises(vim.fault.InvalidLogin):
            _login(port, "user", "pass")


def test_without_a_login_any_non_empty_one_is_let_in(vcsim_binary: Path) -> None:
    with _vcsim(vcsim_binary) as (port, _):
        _login(port, "user", "pass")
        _login(port, "anyone", "anything")


def test_a_user_without_a_password_is_refused_at_start(vcsim_binary: Path) -> None:
    out = subprocess.run(
        [str(vcsim_binary), "-listen", "127.0.0.1:0", "-username", "ops"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_without_login_env(),
        check=False,
    )
    assert out.returncode == 1
    assert "-username and -password go together" in out.stderr
