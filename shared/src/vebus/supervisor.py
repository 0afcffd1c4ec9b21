"""`vebus up`: nats-server, the simulator when no vCenter is configured, and the four
services as separate processes on one machine; a service that dies is restarted with
backoff; Ctrl-C stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from vebus import embedded
from vebus.config import parse_config

__all__ = ["SERVICES", "UpOptions", "run_up"]

log = logging.getLogger("vebus.up")

SERVICES = ("collector", "filter", "dispatcher", "deadletter")
VCSIM_USER, VCSIM_PASSWORD = "user", "pass"
#: a service that ran this long before dying gets its backoff reset
STABLE_AFTER = 60.0
MAX_RESTART_DELAY = 30.0


@dataclass(kw_only=True)
class UpOptions:
    """What `vebus up` was asked to do."""

    config_path: Path | None
    data_dir: Path
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    vcsim_port: int = 8989
    health_ports: dict[str, int] = field(
        default_factory=lambda: {
            "collector": 8181,
            "filter": 8182,
            "dispatcher": 8183,
            "deadletter": 8184,
        }
    )
    echo: bool = True


def _say(msg: str) -> None:
    print(f"vebus up: {msg}", flush=True)


def _local_port(url: str) -> int | None:
    """The port of a nats:// URL on this machine, or None for a remote server."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return parts.port or 4222
    return None


def effective_config(raw: dict[str, Any], opts: UpOptions, vcsim_url: str | None) -> dict[str, Any]:
    """The config the services get: the user's, plus NATS address, and the simulator."""
    out = dict(raw)
    nats_cfg = dict(out.get("nats") or {})
    nats_cfg.setdefault("url", f"nats://127.0.0.1:{opts.nats_port}")
    out["nats"] = nats_cfg
    if vcsim_url is not None:
        out["vcenters"] = [
            {
                "name": "vcsim",
                "url": vcsim_url,
                "username": VCSIM_USER,
                "password": VCSIM_PASSWORD,
                "start": "earliest",
            }
        ]
        routes = list(out.get("routes") or [])
        if not any(r.get("name") == "console" for r in routes if isinstance(r, dict)):
            routes.append({"name": "console", "sink": {"kind": "console"}})
        out["routes"] = routes
    return out


class _Service:
    def __init__(self, name: str, args: list[str], log_path: Path, echo: bool) -> None:
        self.name, self.args, self.log_path, self.echo = name, args, log_path, echo
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.restarts = 0

    async def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.started = time.monotonic()

    async def relay(self) -> None:
        """Copy the service's output to its log file and, prefixed, to our stdout."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as f:
            async for line in self.proc.stdout:
                f.write(line)
                f.flush()
                if self.echo:
                    sys.stdout.write(f"{self.name:<10} | {line.decode(errors='replace')}")
                    sys.stdout.flush()


async def _supervise(svc: _Service, stopping: asyncio.Event) -> None:
    delay = 1.0
    while not stopping.is_set():
        await svc.start()
        relay = asyncio.create_task(svc.relay())
        assert svc.proc is not None
        code = await svc.proc.wait()
        await relay
        if stopping.is_set():
            return
        ran = time.monotonic() - svc.started
        if ran > STABLE_AFTER:
            delay = 1.0
        svc.restarts += 1
        _say(
            f"{svc.name} exited with status {code} after {ran:.0f}s; restarting in {delay:.0f}s "
            f"(log: {svc.log_path})"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, MAX_RESTART_DELAY)


async def _stop(svc: _Service) -> None:
    if svc.proc is None or svc.proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        svc.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(svc.proc.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            svc.proc.kill()
        await svc.proc.wait()


def _port_free(port: int) -> bool:
    return not embedded.wait_for_port(port, timeout=0.05)


async def run_up(opts: UpOptions, raw: dict[str, Any]) -> int:
    """Run everything until Ctrl-C or SIGTERM; returns the exit status."""
    data = opts.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started: list[embedded.ManagedProcess] = []
    try:
        nats_url = (raw.get("nats") or {}).get("url") if isinstance(raw.get("nats"), dict) else None
        local = _local_port(nats_url) if nats_url else opts.nats_port
        if local is not None:
            if not _port_free(local):
                _say(
                    f"port {local} is in use (another `vebus up` or nats-server?); stop it or "
                    f"pass --nats-port"
                )
                return 1
            proc, port = embedded.start_nats(
                data / "nats",
                port=local,
                http_port=opts.nats_monitor_port if _port_free(opts.nats_monitor_port) else None,
                log_path=logs / "nats-server.log",
            )
            started.append(proc)
            opts.nats_port = port
            _say(f"NATS JetStream   nats://127.0.0.1:{port}  (store {data / 'nats'})")
        else:
            _say(f"NATS             {nats_url} (not started here)")

        vcsim_url = None
        if not raw.get("vcenters"):
            if not _port_free(opts.vcsim_port):
                _say(f"port {opts.vcsim_port} is in use; pass --vcsim-port")
                return 1
            _say("no vCenter configured: starting the vCenter simulator (first run builds it)")
            binary = embedded.vcsim_binary(_vcsim_cache())
            vproc, vcsim_url = embedded.start_vcsim(
                binary, port=opts.vcsim_port, log_path=logs / "vcsim.log"
            )
            started.append(vproc)
            _say(f"vCenter simulator {vcsim_url}  (user {VCSIM_USER}, password {VCSIM_PASSWORD})")

        cfg = effective_config(raw, opts, vcsim_url)
        parse_config(cfg)  # fail here, once, rather than in four services
        cfg_path = data / "vebus.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        _say(f"config           {cfg_path}")

        services = []
        for name in SERVICES:
            port = opts.health_ports[name]
            if not _port_free(port):
                port = embedded.free_port()
            args = [
                sys.executable,
                "-m",
                f"vebus_{name}",
                "--config",
                str(cfg_path),
                "--health-port",
                str(port),
            ]
            services.append(_Service(name, args, logs / f"{name}.log", opts.echo))
            _say(f"{name:<16} http://127.0.0.1:{port}/readyz  (log {logs / (name + '.log')})")
        _say("press Ctrl-C to stop; `vebus demo` in another terminal makes events")

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        tasks = [asyncio.create_task(_supervise(s, stopping)) for s in services]
        await stopping.wait()
        _say("stopping")
        # the collector first, so nothing new enters while the others finish
        for svc in services:
            await _stop(svc)
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0
    finally:
        for proc in reversed(started):
            proc.stop()


def _vcsim_cache() -> Path:
    root = embedded.repo_root()
    if root is not None:
        return root / "build"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vebus"


def load_raw(path: Path | None) -> dict[str, Any]:
    """The user's YAML as a dict, `${ENV}` references kept for the services to resolve."""
    if path is None or not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded
