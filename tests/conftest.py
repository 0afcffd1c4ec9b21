"""Fixtures: real nats-server, the real vCenter simulator, a real HTTP sink, real services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from tests.support.auth import AuthNats, start_auth_nats
from tests.support.sink import RecordingSink
from tests.support.stack import Stack
from vebus.local.embedded import (
    ManagedProcess,
    build_vcsim,
    free_port,
    start_nats,
    start_vcsim,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "veba"


class NatsServer:
    def __init__(self, proc: ManagedProcess, port: int, store: Path) -> None:
        self.proc, self.port, self.store = proc, port, store

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    store = tmp_path / "nats"
    proc, port = start_nats(store)
    yield NatsServer(proc, port, store)
    proc.kill()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def vcsim_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("VEBUS_VCSIM"):
        return Path(os.environ["VEBUS_VCSIM"])
    return build_vcsim(REPO / "build" / "vcsim")


class Vcsim:
    def __init__(self, proc: ManagedProcess, url: str) -> None:
        self.proc, self.url = proc, url
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def vcsim(vcsim_binary: Path, tmp_path: Path) -> Iterator[Vcsim]:
    proc, url = start_vcsim(vcsim_binary, log_path=tmp_path / "vcsim.log")
    yield Vcsim(proc, url)
    proc.stop()  # SIGTERM: the simulator removes its temporary datastore folders


@pytest.fixture
def tls_vcsim(vcsim_binary: Path, tmp_path: Path) -> Iterator[Callable[[], tuple[str, Path]]]:
    """Starts simulators over HTTPS; each call returns a URL and the PEM of its self-signed
    certificate (for 127.0.0.1, ::1 and localhost)."""
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


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    """nats-server with deploy/nats/auth.conf (tests/support/auth.PASSWORDS)."""
    server = start_auth_nats(tmp_path)
    yield server
    server.proc.kill()


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    st = Stack(tmp_path, nats_server.url)
    yield st
    for p in st.procs.values():
        p.kill()
