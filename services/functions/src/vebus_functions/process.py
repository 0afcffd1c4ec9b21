"""Starting a function's processes: a clean environment, its folder, its user, its group.

Every process of a function (a Python worker, a command, an HTTP function server) starts
with an environment built from nothing but:

- PATH (the service's Python's folder first, then the system's), HOME (the `run_as`
  user's home, else the function's folder), LANG=C.UTF-8, TZ when the service has one;
- VEBUS_FUNCTION (the function's name) and PYTHONUNBUFFERED=1;
- the function's own `env:` and `secrets:`.

Never the service's own variables: not its NATS user or password, not another function's
secrets, not the vCenter passwords of the config. Each process leads a session (process
group) of its own, so a timeout kills what it started too.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vebus import names
from vebus.config import FunctionConfig
from vebus.errors import ConfigError

__all__ = ["Identity", "Spawner", "free_port", "kill_group", "rss_bytes"]

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Identity:
    """The OS user a function's processes run as (None: the service's own)."""

    uid: int
    gid: int
    home: str | None


def resolve_run_as(run_as: str, where: str) -> Identity:
    """`name`, `uid` or `uid:gid` as an Identity; ConfigError when there is no such user or
    this process cannot switch to it (it must run as root)."""
    user, _, group = run_as.strip().partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid, home = entry.pw_uid, entry.pw_gid, entry.pw_dir
    except KeyError:
        if not user.isdigit():
            raise ConfigError([f"{where}.run_as: no user named {user!r} on this host"]) from None
        uid, gid, home = int(user), int(user), None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError([f"{where}.run_as: no group named {group!r}"]) from None
    if os.geteuid() != 0 and uid != os.geteuid():
        raise ConfigError(
            [
                f"{where}.run_as: the functions service runs as uid {os.geteuid()}, not root: "
                f"it cannot start processes as {run_as!r} (run it as root, or drop run_as)"
            ]
        )
    return Identity(uid, gid, home if home and Path(home).is_dir() else None)


class Spawner:
    """Starts the processes of one function (see the module docstring)."""

    def __init__(self, function: FunctionConfig, workdir: Path, secrets: Mapping[str, str],
                 where: str) -> None:  # fmt: skip
        self.function = function
        self.workdir = workdir
        self.identity = (
            resolve_run_as(function.run_as, where) if function.run_as is not None else None
        )
        self._secrets = dict(secrets)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment of a process of this function."""
        home = (self.identity.home if self.identity else None) or str(self.workdir)
        env = {
            "PATH": f"{Path(sys.executable).parent}:{_SYSTEM_PATH}",
            "HOME": home,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            names.ENV_FUNCTION: self.function.name,
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        env.update(self.function.env)
        env.update(self._secrets)
        env.update(extra or {})
        return env

    async def spawn(
        self,
        args: Sequence[str],
        *,
        stdin: int | None,
        stdout: int | None,
        stderr: int | None,
        extra_env: Mapping[str, str] | None = None,
    ) -> asyncio.subprocess.Process:
        """Start `args` in the function's folder, as its user, in a session of its own."""
        kwargs: dict[str, Any] = {}
        if self.identity is not None:
            kwargs.update(user=self.identity.uid, group=self.identity.gid, extra_groups=[])
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=str(self.workdir),
            env=self.environment(extra_env),
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process and everything in its session (it leads one)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def rss_bytes(pid: int) -> int | None:
    """The resident memory of process `pid`, in bytes (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for an HTTP function server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
