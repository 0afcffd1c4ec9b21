"""A private Docker engine for the compose test, one that cannot clash with a dockerd already
running on the machine (the system's, or another checkout's test):

- its own API socket, pid file and exec root (a short directory under /tmp: containerd's
  sockets live there, and a unix socket path has a length limit);
- its own data root under the checkout's build/ (images and build cache: a second run is
  warm), guarded by a lock so that two runs of one checkout cannot share it;
- no default bridge (`--bridge none`: docker0 belongs to the system's dockerd) and no
  iptables rules (`--iptables=false`: the DOCKER chains are shared names); published ports
  go through docker-proxy, and compose's own network is a bridge of this engine's;
- a default address pool (a /16 of 10.0.0.0/8) that no route of the machine uses.

Where another dockerd has set the FORWARD policy to DROP (its bridges' traffic passes
through iptables when br_netfilter is loaded), the engine adds one chain of its own that
lets its pool's traffic through, and removes it at the end. `stop()` ends the daemon (and
its containerd), then removes the bridges (those with an address in its pool), chains and
mounts it left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["Engine", "EngineError", "why_docker_cannot_run"]

#: the environment variables that would point the docker CLI or compose elsewhere
_DOCKER_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
)


class EngineError(RuntimeError):
    """The private dockerd could not start, or a docker command failed."""


def _path() -> str:
    """PATH with the sbin directories, where Debian puts dockerd, runc and iptables."""
    return os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_path())


def _sh(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a system tool (ip, iptables, umount) with the sbin directories on PATH."""
    env = {**os.environ, "PATH": _path()}
    return subprocess.run(args, capture_output=True, text=True, check=check, env=env)


def why_docker_cannot_run() -> tuple[str, bool] | None:
    """None when this machine can run the compose test; else (why, fixable): `fixable` when
    scripts/setup would install what is missing (root with apt-get), so that a CI machine
    fails instead of skipping."""
    if os.geteuid() != 0:
        return "not root: the compose test runs its own dockerd, which needs root", False
    tools = {
        "dockerd": "docker.io",
        "docker": "docker.io",
        "containerd": "containerd",
        "runc": "runc",
    }
    missing = sorted({pkg for tool, pkg in tools.items() if _which(tool) is None})
    compose = _which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if not compose or compose.returncode != 0:
        missing.append("Docker Compose v2")
    if not missing:
        return None
    if _which("apt-get") is None:
        return f"Docker cannot be installed here (no apt-get): {', '.join(missing)} missing", False
    return f"{', '.join(missing)} missing: run ./scripts/setup (as root it installs them)", True


def _routes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the machine routes (all tables), the default route aside."""
    nets = []
    for line in _sh("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in ("broadcast", "local", "unreachable", "multicast", "blackhole"):
            words = words[1:]
        with contextlib.suppress(ValueError, IndexError):
            nets.append(ipaddress.IPv4Network(words[0], strict=False))
    return nets


def _pick_pool() -> tuple[ipaddress.IPv4Network, IO[str]]:
    """A /16 no route uses, and a lock on it that other test engines respect (they start
    with no network yet, so routes alone would not keep two of them apart)."""
    used = _routes()
    for second in range(200, 250):
        pool = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if any(pool.overlaps(n) for n in used if n.prefixlen > 0):
            continue
        lock = open(f"/tmp/vebus-test-pool-10.{second}.lock", "w")  # noqa: SIM115 (held)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return pool, lock
    raise EngineError("no free /16 in 10.200.0.0-10.249.0.0 for the engine's networks")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _bridges_in(pool: ipaddress.IPv4Network) -> set[str]:
    """The bridges with an address in `pool`: this engine's, since it holds the pool's lock
    (another engine's bridges, made after this one started, are in another pool)."""
    found = set()
    for line in _sh("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        words = line.split()
        if len(words) > 3 and words[1].startswith("br-") and words[2] == "inet":
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Interface(words[3]).ip in pool:
                    found.add(words[1])
    return found


@dataclass
class Engine:
    """dockerd with everything of its own; `start()`, `env()`, `stop()`."""

    #: build/compose-test of the checkout: data root, logs, the lock
    home: Path
    data_root: Path = field(init=False)
    exec_root: Path = field(init=False)
    log_path: Path = field(init=False)
    pool: ipaddress.IPv4Network | None = None
    proc: subprocess.Popen[bytes] | None = None
    chain: str | None = None
    _lock: IO[str] | None = None
    _pool_lock: IO[str] | None = None

    def __post_init__(self) -> None:
        self.data_root = self.home / "docker"
        self.log_path = self.home / "dockerd.log"
        self.exec_root = Path("/nonexistent")

    @property
    def socket(self) -> Path:
        return self.exec_root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ for docker and compose commands against this engine only."""
        env = {k: v for k, v in os.environ.items() if k not in _DOCKER_ENV}
        env["DOCKER_HOST"] = self.host
        env["PATH"] = _path()
        env.update(extra)
        return env

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.home / "engine.lock", "w")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise EngineError(
                f"another compose test of this checkout runs its dockerd on {self.data_root}"
                f" (lock {self.home / 'engine.lock'}): wait for it to finish"
            ) from None
        self.pool, self._pool_lock = _pick_pool()
        self.exec_root = Path(tempfile.mkdtemp(prefix="vebus-dockerd-", dir="/tmp"))
        self._allow_forwarding()
        args = [
            "dockerd",
            "--host",
            self.host,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.exec_root / "docker.pid"),
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
            "--default-address-pool",
            f"base={self.pool},size=24",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%F %T')} {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            ok = subprocess.run(
                ["docker", "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                env=self.env(),
                check=False,
                timeout=30,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.3)
        raise EngineError(f"dockerd did not answer in {timeout:.0f}s:\n{self.log_tail()}")

    def _allow_forwarding(self) -> None:
        """If another dockerd made FORWARD drop by default, let the pool's traffic through
        in a chain of this engine's own (removed by stop)."""
        if _which("iptables") is None or self.pool is None:
            return
        if "-P FORWARD DROP" not in _sh("iptables", "-w", "-S", "FORWARD").stdout:
            return
        self.chain = f"VEBUS-TEST-{os.getpid()}"
        pool = str(self.pool)
        for cmd in (
            ["-N", self.chain],
            ["-A", self.chain, "-s", pool, "-j", "ACCEPT"],
            ["-A", self.chain, "-d", pool, "-j", "ACCEPT"],
            ["-I", "FORWARD", "1", "-j", self.chain],
        ):
            _sh("iptables", "-w", *cmd, check=True)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 60.0) -> list[str]:
        """Stop dockerd and remove what it left behind; returns what had to be cleaned."""
        cleaned: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                cleaned.append("dockerd killed: it did not stop on SIGTERM")
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        # its containerd and shims name the exec root on their command line: none may
        # outlive it
        for pid in self._leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                cleaned.append(f"process {pid} ({' '.join(_cmdline(pid))[:80]}) killed")
        for mount in self._mounts():
            _sh("umount", "-l", mount)
            cleaned.append(f"unmounted {mount}")
        for bridge in sorted(_bridges_in(self.pool) if self.pool else ()):
            _sh("ip", "link", "delete", bridge)
            cleaned.append(f"bridge {bridge} removed")
        if self.chain:
            for cmd in (
                ["-D", "FORWARD", "-j", self.chain],
                ["-F", self.chain],
                ["-X", self.chain],
            ):
                _sh("iptables", "-w", *cmd)
            self.chain = None
        if self.exec_root.is_dir() and self.exec_root.name.startswith("vebus-dockerd-"):
            shutil.rmtree(self.exec_root, ignore_errors=True)
        for lock in (self._pool_lock, self._lock):
            if lock is not None:
                lock.close()
        self._lock = self._pool_lock = None
        return cleaned

    def _leftovers(self) -> list[int]:
        if not self.exec_root.name.startswith("vebus-dockerd-"):
            return []
        mark = str(self.exec_root)
        return [
            int(e.name)
            for e in Path("/proc").iterdir()
            if e.name.isdigit() and any(mark in a for a in _cmdline(int(e.name)))
        ]

    def _mounts(self) -> list[str]:
        roots = (str(self.data_root), str(self.exec_root))
        out = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mounts").read_text().splitlines():
                point = line.split()[1].replace("\\040", " ")
                if point.startswith(roots):
                    out.append(point)
        return sorted(out, key=len, reverse=True)

    # ------------------------------------------------------------------ helpers

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS` against this engine."""
        return subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run `docker ARGS` against this engine; its output (EngineError when it fails)."""
        out = self.run(*args, timeout=timeout)
        if check and out.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args)}: exit {out.returncode}\n"
                f"{out.stdout[-2000:]}{out.stderr[-2000:]}"
            )
        return out.stdout

    def inspect(self, *names: str) -> list[dict[str, object]]:
        data: list[dict[str, object]] = json.loads(self.docker("inspect", *names))
        return data
