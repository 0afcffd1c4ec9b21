"""The mapping of real events from the vCenter simulator (deploy/vcsim) matches VEBA's shape."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from vebus_collector.mapping import event_class, event_kind, to_data, to_json

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "veba"
SOURCES = (REPO / "deploy" / "vcsim" / "main.go", REPO / "deploy" / "vcsim" / "build.sh")


def _fresh(binary: Path) -> bool:
    """True if `binary` exists and is newer than the simulator's sources."""
    return binary.is_file() and all(binary.stat().st_mtime > src.stat().st_mtime for src in SOURCES)


@pytest.fixture(scope="session")
def simulator_binary(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/vcsim when it is newer than its sources, else a build into pytest's cache."""
    built = REPO / "build" / "vcsim"
    if _fresh(built):
        return built
    cache = pytestconfig.cache
    folder = cache.mkdir("vcsim") if cache is not None else tmp_path_factory.mktemp("vcsim")
    cached = folder / "vcsim"
    if not _fresh(cached):
        build = subprocess.run(
            ["bash", str(REPO / "deploy" / "vcsim" / "build.sh"), str(cached)],
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        assert build.returncode == 0, f"deploy/vcsim/build.sh failed:\n{build.stderr[-3000:]}"
    return cached


@pytest.fixture
def simulator_url(simulator_binary: Path, tmp_path: Path) -> Iterator[str]:
    """A running simulator on a free port; yields its URL, stops it (SIGTERM) at the end."""
    log = tmp_path / "vcsim.log"
    datastores = tmp_path / "datastores"  # its govcsim-* folders, even if it is killed
    datastores.mkdir()
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [str(simulator_binary), "-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "TMPDIR": str(datastores)},
        )
    try:
        url = _read_url(proc, log, timeout=30)
        yield url
        proc.terminate()
        assert proc.wait(timeout=15) == 0, f"vcsim exit status on SIGTERM:\n{log.read_text()}"
        assert not any(datastores.iterdir()), "vcsim left its datastore folders behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _read_url(proc: subprocess.Popen[str], log: Path, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                if line.startswith("VCSIM_URL="):
                    return line.removeprefix("VCSIM_URL=").strip()
                if not line:
                    break
            elif proc.poll() is not None:
                break
    raise AssertionError(f"vcsim printed no VCSIM_URL line:\n{log.read_text()}")


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return None if value is None else "*"


@pytest.mark.integration
def test_powered_off_vm_event_maps_to_veba_shape(simulator_url: str) -> None:
    url = urlsplit(simulator_url)
    assert url.scheme == "http"
    assert url.path == "/sdk"
    assert url.hostname == "127.0.0.1"
    assert url.port
    si = SmartConnect(host=url.hostname, port=url.port, user="user", pwd="pass", protocol="http")
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        vm = next(v for v in view.view if v.runtime.powerState == "poweredOn")
        view.Destroy()
        WaitForTask(vm.PowerOffVM_Task())

        # vcsim 0.24 fills a new collector's page with the newest event and then the OLDEST
        # ones: select by type and entity so that the event is on the page.
        events = content.eventManager.QueryEvents(
            vim.event.EventFilterSpec(
                eventTypeId=["VmPoweredOffEvent"],
                entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
            )
        )
        version = si._stub.version  # the API version negotiated with this server
        name, moid = vm.name, vm._moId
    finally:
        Disconnect(si)

    off = [e for e in events if event_class(e) == "VmPoweredOffEvent"]
    assert len(off) == 1, [event_class(e) for e in events]
    event = off[0]
    assert event_kind(event) == "event"

    data = to_data(event, version=version)
    assert data["Vm"]["Name"] == name
    assert data["Vm"]["Vm"] == {"Type": "VirtualMachine", "Value": moid}
    assert data["Key"] == event.key > 0
    assert data["CreatedTime"].endswith("Z")
    assert data["UserName"] == "user"
    assert data["Host"]["Host"]["Type"] == "HostSystem"
    assert data["Datacenter"]["Datacenter"]["Type"] == "Datacenter"

    sample = json.loads((SAMPLES / "veba-VmPoweredOffEvent.json").read_text())["data"]
    # Same keys and nesting as VEBA's payload; the simulator leaves changeTag unset (null),
    # where VEBA (Go zero values) writes "".
    assert _shape(data) == _shape(sample) | {"ChangeTag": None}
    assert msgspec.json.decode(to_json(event, version=version)) == data
