"""The repository's compose.yaml run for real by the compose test: `docker compose` against the
test's own engine with an env file of test passwords, the simulator driven with pyvmomi
through its published port, an HTTP sink container, and NATS read as the admin user."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.compose.engine import Engine
from tests.support.ports import free_run
from vebus.config import NatsTls
from vebus.local.natsauth import USERS
from vebus.local.tls import ensure_local_tls
from vebus.runtime.connect import tls_context

__all__ = ["SERVICES", "Compose", "Poster", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
PROJECT = "vebus"
SERVICES = ("collector", "filter", "dispatcher", "deadletter", "functions", "console")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
SINK = "vebus-test-sink"
#: the prefixes of the variables compose.yaml reads
_COMPOSE_VARIABLES = ("VEBUS_", "VCENTER_", "OTEL_")


#: the names the NATS nodes are reached at (containers) and the published port (the test)
TLS_HOSTS = ("nats-1", "nats-2", "nats-3", "localhost", "127.0.0.1")
#: the user every vebus container runs as
CONTAINER_UID = 10001


def _password() -> str:
    """As env.example says to make them: nats-server reads a password from its environment
    as a config value, so it must start with a letter (\"1k\" would be the number 1024)."""
    return "p" + secrets.token_hex(16)


def wait_for(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.5,
    details: Callable[[], str] = lambda: "",
) -> float:
    """Poll `predicate` until it holds; AssertionError naming `what` (and `details()`) after
    `timeout`. Returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{details()}")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass
class Compose:
    """compose.yaml of the repository, run by `docker compose` against `engine`."""

    engine: Engine
    workdir: Path
    passwords: dict[str, str] = field(default_factory=dict)
    nats_port: int = 0
    vcsim_port: int = 0
    sink_port: int = 0
    console_port: int = 0
    vcenter_password: str = ""
    sink_token: str = ""
    #: the token user admin signs in to the console with (`vebus console token` made it)
    console_token: str = ""
    #: container name -> RestartCount when a test last looked
    seen_restarts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env_file = self.workdir / "compose.env"
        self.sinks_env = self.workdir / "sinks.env"
        self.routes_file = self.workdir / "routes.yaml"

    # ------------------------------------------------------------------ setup

    def write_env(self) -> None:
        """The test's .env (an env file given to every compose command) and sinks.env."""
        first = free_run(4)
        self.nats_port, self.vcsim_port, self.sink_port = first, first + 1, first + 2
        self.console_port = first + 3
        self.passwords = {name: _password() for name in USERS}  # every user of auth.conf
        self.vcenter_password = _password()
        self.sink_token = _password()
        # TLS to NATS on (clients and routes), with certificates as `vebus tls init` makes
        # them, given to the containers' user
        self.tls = ensure_local_tls(self.workdir / "tls", TLS_HOSTS)
        for path in (self.tls.folder, *self.tls.folder.iterdir()):
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
        lines = [f"VEBUS_NATS_{n.upper()}_PASSWORD={p}" for n, p in self.passwords.items()]
        lines += [
            "VCENTER_USER=vebus-test",
            f"VCENTER_PASSWORD={self.vcenter_password}",
            f"VEBUS_NATS_PORT={self.nats_port}",
            f"VEBUS_VCSIM_PORT={self.vcsim_port}",
            f"VEBUS_SINKS_ENV_FILE={self.sinks_env}",
            f"VEBUS_TLS_DIR={self.tls.folder}",
            f"VEBUS_CONSOLE_PORT={self.console_port}",
            f"VEBUS_DLQ_TOKEN={secrets.token_hex(24)}",
            f"VEBUS_CONSOLE_SESSION_KEY={secrets.token_hex(32)}",
        ]
        # the console's sign-in as env.example says to make it: the command appends the
        # hash's line (single-quoted: compose must not read its $ signs as variables)
        made = subprocess.run(
            [str(Path(sys.executable).parent / "vebus"), "console", "token",
             "--env", "VEBUS_CONSOLE_TOKEN_HASH"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        self.console_token = made.stderr.strip().rsplit(" ", 1)[1]
        lines.append(made.stdout.strip())
        self.env_file.write_text("\n".join(lines) + "\n")
        self.sinks_env.write_text(f"SINK_TOKEN={self.sink_token}\n")

    # ------------------------------------------------------------------ commands

    def compose(
        self,
        *args: str,
        timeout: float = 180.0,
        check: bool = True,
        env_file: bool = True,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose [--env-file ours] ARGS` in the repository."""
        cmd = [
            "docker",
            "compose",
            *(["--env-file", str(self.env_file)] if env_file else []),
            *args,
        ]
        out = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd[:2] + cmd[4:])}: exit {out.returncode}\n"
                f"{out.stdout[-3000:]}{out.stderr[-3000:]}\n{self.logs()}"
            )
        return out

    def env(self, **extra: str) -> dict[str, str]:
        """The engine's environment without compose.yaml's variables: the environment
        overrides an env file, so a developer's own VEBUS_NATS_PORT must not reach compose."""
        env = {k: v for k, v in self.engine.env().items() if not k.startswith(_COMPOSE_VARIABLES)}
        env.update(extra)
        return env

    def logs(self, *services: str, tail: int = 60) -> str:
        """The last lines of each service's containers (all of them by default)."""
        out = subprocess.run(
            [
                "docker",
                "compose",
                "--env-file",
                str(self.env_file),
                "logs",
                "--no-color",
                "--timestamps",
                "--tail",
                str(tail),
                *services,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            check=False,
        )
        return f"---- docker compose logs {' '.join(services)}\n{out.stdout[-12000:]}{out.stderr}"

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """`docker inspect` of the project's containers (of `service`), by name."""
        labels = [f"label=com.docker.compose.project={PROJECT}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        ids = self.engine.docker("ps", "-aq", *[a for lb in labels for a in ("--filter", lb)])
        if not ids.split():
            return []
        data = self.engine.inspect(*ids.split())
        return sorted((dict(d) for d in data), key=lambda d: str(d["Name"]))

    def restarts(self) -> dict[str, int]:
        """Container name -> times Docker restarted it (its restart policy: it crashed)."""
        return {str(c["Name"]).lstrip("/"): int(c["RestartCount"]) for c in self.containers()}

    def health(self) -> dict[str, str]:
        """Container name -> healthy | unhealthy | starting | <state> (no healthcheck)."""
        out = {}
        for c in self.containers():
            state = c["State"]
            out[str(c["Name"]).lstrip("/")] = (
                state.get("Health", {}).get("Status") or state["Status"]
            )
        return out

    def ip_of(self, container: dict[str, Any]) -> str:
        return str(container["NetworkSettings"]["Networks"][f"{PROJECT}_default"]["IPAddress"])

    # ------------------------------------------------------------------ the sink

    def start_sink(self) -> None:
        self.engine.docker("rm", "-f", SINK, check=False)
        self.engine.docker(
            "run",
            "-d",
            "--name",
            SINK,
            "--network",
            f"{PROJECT}_default",
            "--network-alias",
            "sink",
            "--user",
            "10001",
            "-p",
            f"127.0.0.1:{self.sink_port}:8000",
            "-v",
            f"{Path(__file__).with_name('sink.py')}:/sink.py:ro",
            "-e",
            f"SINK_TOKEN={self.sink_token}",
            "--entrypoint",
            "python",
            "vebus/cli:0.1.0",
            "/sink.py",
        )
        wait_for(
            "the sink container answers",
            lambda: self.records(0) is not None,
            30,
            details=lambda: self.engine.docker("logs", SINK, check=False),
        )

    def console(
        self, path: str, *, form: dict[str, str] | None = None, token: str | None = None
    ) -> tuple[int, str, str]:
        """A request to the console's published port as a program makes it (a bearer
        token: admin's unless `token`), following redirects: (status, final path, body)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.console_port}{path}",
            data=urllib.parse.urlencode(form).encode() if form is not None else None,
            headers={"Authorization": f"Bearer {token or self.console_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                final = urllib.parse.urlsplit(r.geturl()).path
                return r.status, final, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, path, e.read().decode()

    def records(self, after: int) -> list[dict[str, Any]] | None:
        url = f"http://127.0.0.1:{self.sink_port}/records?after={after}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                data: list[dict[str, Any]] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ NATS, as admin

    def nats_call(self, fn: Callable[[Any], Any]) -> Any:
        """Run `await fn(js)` with a fresh admin connection through the published port."""

        async def run() -> Any:
            nc = await nats.connect(
                f"nats://127.0.0.1:{self.nats_port}",
                tls=tls_context(
                    NatsTls(
                        ca_file=str(self.tls.ca_file),
                        cert_file=str(self.tls.client_cert),
                        key_file=str(self.tls.client_key),
                    )
                ),
                user="admin",
                password=self.passwords["admin"],
                connect_timeout=5,
                allow_reconnect=False,
            )
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(run())

    def stream_leader(self, stream: str) -> str | None:
        async def leader(js: Any) -> str | None:
            info = await js.stream_info(stream)
            return info.cluster.leader if info.cluster else None

        result: str | None = self.nats_call(leader)
        return result

    def event_keys(self) -> list[int]:
        """The vCenter event key of every event in VEBUS_EVENTS from the simulator."""

        async def keys(js: Any) -> list[int]:
            info = await js.stream_info("VEBUS_EVENTS")
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg("VEBUS_EVENTS", seq=seq)
                except NotFoundError:
                    continue
                if msg.subject.startswith("vebus.events.vcsim."):
                    out.append(int(str((msg.headers or {}).get("ce-id", "-1")).split("-")[-1]))
            return out

        result: list[int] = self.nats_call(keys)
        return result

    def replies(self, function: str) -> list[dict[str, Any]]:
        """The data of every reply event of `function` in VEBUS_EVENTS."""

        async def read(js: Any) -> list[dict[str, Any]]:
            subject = f"vebus.events.functions.{function}"
            out, seq = [], 1
            while True:
                try:
                    msg = await js.get_msg("VEBUS_EVENTS", seq=seq, subject=subject, next=True)
                except NotFoundError:
                    return out
                out.append(json.loads(msg.data or b"{}"))
                seq = int(msg.seq or seq) + 1

        result: list[dict[str, Any]] = self.nats_call(read)
        return result

    def dead_letters(self, route: str) -> int:
        async def count(js: Any) -> int:
            info = await js.stream_info("VEBUS_DLQ", subjects_filter=f"vebus.dlq.{route}")
            return sum((info.state.subjects or {}).values())

        result: int = self.nats_call(count)
        return result

    # ------------------------------------------------------------------ the simulator

    @contextmanager
    def vsphere(self, user: str = "vebus-test", password: str | None = None) -> Iterator[Any]:
        si = SmartConnect(
            host="127.0.0.1",
            port=self.vcsim_port,
            user=user,
            pwd=self.vcenter_password if password is None else password,
            protocol="http",
            connectionPoolTimeout=10,
        )
        try:
            yield si.RetrieveContent()
        finally:
            Disconnect(si)

    def vms(self, content: Any) -> list[Any]:
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        return sorted(view.view, key=lambda v: v.name)

    def power_off(self, content: Any, vm: Any) -> None:
        WaitForTask(vm.PowerOffVM_Task())

    def newest_key(self) -> int:
        with self.vsphere() as content:
            col = content.eventManager.CreateCollectorForEvents(
                vim.event.EventFilterSpec(maxCount=10)
            )
            try:
                return max(int(e.key) for e in col.latestPage or [])
            finally:
                col.DestroyCollector()


class Poster(threading.Thread):
    """Posts `count` GeneralUserEvents at `rate`/s to the simulator, each with the message
    `<prefix>-<n>`; `sent` holds those the simulator accepted."""

    def __init__(self, stack: Compose, prefix: str, count: int, rate: float) -> None:
        super().__init__(name=f"poster-{prefix}", daemon=True)
        self.stack, self.prefix, self.count, self.rate = stack, prefix, count, rate
        self.sent: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            with self.stack.vsphere() as content:
                em = content.eventManager
                start = time.monotonic()
                for n in range(self.count):
                    if (wait := start + n / self.rate - time.monotonic()) > 0:
                        time.sleep(wait)
                    message = f"{self.prefix}-{n}"
                    try:
                        em.PostEvent(
                            vim.event.GeneralUserEvent(
                                message=message,
                                createdTime=dt.datetime.now(dt.UTC),
                                key=0,
                                chainId=0,
                                userName="",
                            )
                        )
                    except Exception as e:  # the simulator's answer, kept for the report
                        self.errors.append(f"{message}: {e!r}"[:300])
                        continue
                    self.sent.append(message)
        except Exception as e:
            self.errors.append(f"poster stopped: {e!r}"[:300])
