"""The vebus topology as real processes for the tests: nats-server, vcsim, the services."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vebus.local.embedded import ManagedProcess, free_port, start_service

SERVICES = ("collector", "filter", "dispatcher", "deadletter")


class Stack:
    """Starts and stops vebus services against one config file, logs under `workdir`."""

    def __init__(self, workdir: Path, nats_url: str) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.config_path = workdir / "vebus.yaml"
        self.procs: dict[str, ManagedProcess] = {}
        self.health: dict[str, int] = {}

    def write_config(self, config: dict[str, Any]) -> Path:
        config = {"nats": {"url": self.nats_url}, **config}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self, *services: str, ready_timeout: float = 30.0) -> None:
        self.start_unready(*services)
        for name in services or SERVICES:
            self.wait_ready(name, ready_timeout)

    def start_unready(self, *services: str) -> None:
        """Start the services without waiting for them to be ready."""
        for name in services or SERVICES:
            port = free_port()
            self.health[name] = port
            self.procs[name] = start_service(
                name,
                self.config_path,
                health_port=port,
                log_path=self.workdir / f"{name}.log",
            )

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health[name]}/readyz"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.poll()}):\n{proc.output()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(
            f"{name} not ready in {timeout}s:\n{self.procs[name].output()[-3000:]}"
        )

    def restart(self, name: str, ready_timeout: float = 30.0) -> None:
        self.procs[name].start()
        self.wait_ready(name, ready_timeout)

    def stop(self, name: str) -> int | None:
        return self.procs[name].stop()

    def stop_all(self) -> dict[str, int | None]:
        return {name: p.stop() for name, p in self.procs.items()}

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.output()[-4000:]}" for n, p in self.procs.items())
