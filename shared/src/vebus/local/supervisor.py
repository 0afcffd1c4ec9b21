"""`vebus up`: nats-server, the simulator when no vCenter is configured, and the
services (names.SERVICES) as separate processes on one machine; a service that dies is
restarted with backoff; Ctrl-C stops everything in order. The config file's routes are applied
(stored in NATS KV) before the services start: in an embedded run the file is the source
of truth, and `vebus routes apply` changes the routes live until the next `vebus up`.
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

import msgspec
import nats.errors
import yaml

from vebus import aio, names
from vebus.config import Config, NatsConfig, NatsTls, parse_config, read_yaml
from vebus.errors import EmbeddedProcessError
from vebus.local import consolesetup, embedded, natsauth
from vebus.local.tls import LocalTls, ensure_local_tls
from vebus.runtime.connect import ConnectFailedError, connect_once

__all__ = ["UpOptions", "run_up"]

log = logging.getLogger("vebus.up")

VCSIM_USER, VCSIM_PASSWORD = "user", "pass"
#: a service that ran this long before dying gets its backoff reset
STABLE_AFTER = 60.0
MAX_RESTART_DELAY = 30.0


@dataclass(kw_only=True)
class UpOptions:
    """What `vebus up` was asked to do."""

    config_path: Path | None
    data_dir: Path
    nats_port: int = names.NATS_PORT
    nats_monitor_port: int = names.NATS_MONITOR_PORT
    #: nats-server processes: 1, or 3 for a JetStream cluster with R3 streams
    nats_cluster: int = 1
    #: replicas per service, e.g. {"dispatcher": 2}
    scale: dict[str, int] = field(default_factory=dict)
    nats_urls: list[str] = field(default_factory=list)
    vcsim_port: int = names.VCSIM_PORT
    health_ports: dict[str, int] = field(default_factory=lambda: dict(names.HEALTH_PORTS))
    echo: bool = True
    #: start nats-server with deploy/nats/auth.conf: one user (and password) per service
    nats_auth: bool = False
    #: TLS on every NATS connection (clients and cluster routes, both sides verified),
    #: from a local CA made in <data-dir>/tls
    nats_tls: bool = False
    #: JetStream's `sync_interval` on every node: "always" (fsync before each ack) or a
    #: duration such as "2m"; None: nats-server's default (2 minutes)
    nats_sync_interval: str | None = None


#: where `vebus up --nats-tls` keeps its CA and certificates, under the data folder
LOCAL_TLS_DIR = "tls"


def _say(msg: str) -> None:
    print(f"vebus up: {msg}", flush=True)


def _local_port(url: str) -> int | None:
    """The port of a nats:// URL on this machine, or None for a remote server."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return parts.port or names.NATS_PORT
    return None


def _client_tls(tls: LocalTls | None) -> NatsTls | None:
    """The client side of the local CA: its certificate and the client key pair."""
    if tls is None:
        return None
    return NatsTls(ca_file=str(tls.ca_file), cert_file=str(tls.client_cert),
                   key_file=str(tls.client_key))  # fmt: skip


def effective_config(
    raw: dict[str, Any], opts: UpOptions, vcsim_url: str | None, tls: LocalTls | None = None
) -> dict[str, Any]:
    """The config the services get: the user's, plus NATS address (and TLS), the simulator."""
    out = dict(raw)
    nats_cfg = dict(out.get("nats") or {})
    if opts.nats_urls:
        nats_cfg["url"] = ",".join(opts.nats_urls)
    nats_cfg.setdefault("url", f"nats://127.0.0.1:{opts.nats_port}")
    if opts.nats_cluster > 1:
        nats_cfg.setdefault("replicas", min(3, opts.nats_cluster))
    if opts.nats_auth:
        # one file for all services: each gets its own user and password in its environment
        nats_cfg["user"] = f"${{{natsauth.USER_ENV}}}"
        nats_cfg["password"] = f"${{{natsauth.PASSWORD_ENV}}}"
    if (client := _client_tls(tls)) is not None:
        nats_cfg["tls"] = msgspec.to_builtins(client)
    out["nats"] = nats_cfg
    if isinstance(out.get("functions"), list):
        # the services read the copy in the data folder: a function's code stays where its
        # paths said, next to the user's file
        base = opts.config_path.resolve().parent if opts.config_path else Path.cwd()
        out["functions"] = [_anchored(f, base) for f in out["functions"]]
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


def _anchored(function: Any, base: Path) -> Any:
    """A `functions:` entry whose `workdir` is absolute (`base`, or under it)."""
    if not isinstance(function, dict):
        return function
    workdir = function.get("workdir")
    if isinstance(workdir, str) and ("${" in workdir or Path(workdir).is_absolute()):
        return function
    return {**function, "workdir": str(base / workdir) if workdir else str(base)}


class _Service:
    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        echo: bool,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.log_path, self.echo = name, args, log_path, echo
        #: added to our environment: the service's own NATS user and password
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.restarts = 0

    async def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
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
        await aio.sleep(delay, stopping)
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


class _Node:
    """A nats-server (or the simulator) started here, restarted if it dies."""

    def __init__(self, name: str, proc: embedded.ManagedProcess) -> None:
        self.name, self.proc = name, proc
        self.restarts = 0


async def _watch(node: _Node, stopping: asyncio.Event) -> None:
    delay = 1.0
    async for _ in aio.every(0.5, stopping, wait_first=True):
        code = node.proc.poll()
        if code is None:
            continue
        _say(f"{node.name} exited with status {code}; restarting in {delay:.0f}s")
        if await aio.sleep(delay, stopping):
            return
        await asyncio.to_thread(node.proc.start)
        node.restarts += 1
        delay = min(delay * 2, MAX_RESTART_DELAY)


def _server_conf(
    data: Path, passwords: dict[str, str] | None, sync_interval: str | None
) -> tuple[str, dict[str, str] | None]:
    """The nats-server config text every node shares, and the environment it needs.

    With --nats-auth it holds deploy/nats/auth.conf itself (nats-server resolves an include
    against the including file's folder only), whose passwords come from the environment.
    Cluster routes are not affected: a `cluster {}` without `authorization` takes routes
    from any node that knows the cluster port, which listens on 127.0.0.1 only. With
    --nats-sync-interval, a `jetstream` block with `sync_interval` (the command line's
    `-js -sd` add the store folder to it). Ports, JetStream and the cluster otherwise come
    from the command line.
    """
    text, env = "", None
    if passwords:
        text += natsauth.auth_conf_text()
        env = dict(os.environ)
        env.update({natsauth.password_var(u): pw for u, pw in passwords.items()})
    if sync_interval:
        text += f'\njetstream {{\n  sync_interval: "{sync_interval}"\n}}\n'
    return text, env


def _tls_conf(tls: LocalTls, cluster_port: int | None, routes: str) -> str:
    """A nats-server config of TLS on client connections and cluster routes, both sides
    verified against the local CA (ports, JetStream and auth come from the command line and
    the auth include)."""
    block = (
        f'  cert_file: "{tls.server_cert}"\n  key_file: "{tls.server_key}"\n'
        f'  ca_file: "{tls.ca_file}"\n  verify: true\n  timeout: 5\n'
    )
    text = f"# generated by `vebus up --nats-tls`\ntls {{\n{block}}}\n"
    if cluster_port is not None:
        listed = ", ".join(f'"{r}"' for r in routes.split(","))
        text += (
            f'cluster {{\n  name: "vebus"\n  listen: "127.0.0.1:{cluster_port}"\n'
            f"  routes: [{listed}]\n  tls {{\n{block}  }}\n}}\n"
        )
    return text


def _start_nats_nodes(
    opts: UpOptions,
    data: Path,
    logs: Path,
    passwords: dict[str, str] | None = None,
    tls: LocalTls | None = None,
) -> list[tuple[_Node, int]]:
    """One nats-server, or a cluster of `opts.nats_cluster` with routes between them."""
    n = opts.nats_cluster
    ports = [opts.nats_port + i for i in range(n)]
    for port in ports:
        if not _port_free(port):
            raise EmbeddedProcessError(
                f"port {port} is in use (another `vebus up` or nats-server?); stop it or "
                "pass --nats-port"
            )
    cluster_ports = [embedded.free_port() for _ in range(n)] if n > 1 else []
    shared, env = _server_conf(data, passwords, opts.nats_sync_interval)
    auth_args: list[str] = []
    if shared:
        conf = data / "nats-server.conf"
        conf.write_text(
            "# generated by `vebus up`: deploy/nats/auth.conf (--nats-auth) and JetStream's\n"
            "# sync_interval (--nats-sync-interval); ports, JetStream and cluster come from the\n"
            "# command line, passwords from the environment\n\n" + shared
        )
        auth_args = ["-c", str(conf)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nodes = []
    for i, port in enumerate(ports):
        name = "nats-server" if n == 1 else f"nats-{i + 1}"
        extra: list[str] = list(auth_args)
        if tls is not None:
            # TLS on the routes needs a cluster block in a file (the flags have none for it),
            # and nats-server takes one config file: the auth users go into it too
            conf = data / f"{name}-tls.conf"
            text = _tls_conf(tls, cluster_ports[i] if n > 1 else None, routes)
            conf.write_text(text + ("\n" + shared if shared else ""))
            extra = ["-c", str(conf)] + (["-n", f"vebus-{i + 1}"] if n > 1 else [])
        elif n > 1:
            extra += [
                "-n",
                f"vebus-{i + 1}",
                "--cluster_name",
                "vebus",
                "--cluster",
                f"nats://127.0.0.1:{cluster_ports[i]}",
                "--routes",
                routes,
            ]
        monitor = opts.nats_monitor_port + i
        proc, port = embedded.start_nats(
            data / ("nats" if n == 1 else name),
            port=port,
            http_port=monitor if _port_free(monitor) else None,
            log_path=logs / f"{name}.log",
            extra_args=extra,
            env=env,
        )
        nodes.append((_Node(name, proc), port))
    return nodes


async def _wait_for_jetstream(
    cfg: NatsConfig, user: str | None = None, password: str | None = None, timeout: float = 60.0
) -> None:
    """Wait until JetStream answers (a cluster first elects its meta leader)."""
    import nats.errors

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            nc = await connect_once(cfg, url=cfg.url, user=user, password=password,
                                    name="vebus-up")  # fmt: skip
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except ConnectFailedError as e:
            if e.tls or e.auth:
                raise EmbeddedProcessError(f"cannot reach the NATS started here: {e}") from e
            last = e
            await asyncio.sleep(0.5)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            last = e
            await asyncio.sleep(0.5)
    raise EmbeddedProcessError(f"JetStream did not become ready in {timeout:.0f}s: {last!r}")


async def run_up(opts: UpOptions, raw: dict[str, Any]) -> int:
    """Run everything until Ctrl-C or SIGTERM; returns the exit status."""
    data = opts.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nodes: list[_Node] = []
    passwords: dict[str, str] = {}
    auth_path = data / natsauth.AUTH_FILE
    if opts.nats_auth:
        auth_path, passwords = natsauth.load_or_create(data)
    tls = ensure_local_tls(data / LOCAL_TLS_DIR) if opts.nats_tls else None
    try:
        nats_url = (raw.get("nats") or {}).get("url") if isinstance(raw.get("nats"), dict) else None
        if nats_url and _local_port(nats_url) is None:
            _say(f"NATS             {nats_url} (not started here)")
        else:
            if nats_url:
                opts.nats_port = _local_port(nats_url) or opts.nats_port
            try:
                started = _start_nats_nodes(opts, data, logs, passwords, tls)
            except (EmbeddedProcessError, FileNotFoundError) as e:
                _say(str(e))
                return 1
            nodes += [node for node, _ in started]
            opts.nats_urls = [f"nats://127.0.0.1:{port}" for _, port in started]
            for node, port in started:
                _say(
                    f"NATS JetStream   nats://127.0.0.1:{port}  ({node.name}, log "
                    f"{node.proc.log_path})"
                )
            if opts.nats_sync_interval:
                _say(f"NATS fsync       sync_interval {opts.nats_sync_interval} on every node")
            if tls is not None:
                _say(f"NATS TLS         clients and routes verified; CA and certificates in "
                     f"{tls.folder}")  # fmt: skip
            if passwords:
                _say(
                    f"NATS users       one per service (deploy/nats/auth.conf); passwords in "
                    f"{auth_path}"
                )
                _say(f"                 {_admin_hint(auth_path)}")
            admin_user = "admin" if passwords else None
            waiting = NatsConfig(url=",".join(opts.nats_urls), tls=_client_tls(tls))
            try:
                await _wait_for_jetstream(waiting, admin_user, passwords.get("admin"))
            except EmbeddedProcessError as e:
                _say(str(e))
                return 1

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
            nodes.append(_Node("vcsim", vproc))
            _say(f"vCenter simulator {vcsim_url}  (user {VCSIM_USER}, password {VCSIM_PASSWORD})")

        cfg = effective_config(raw, opts, vcsim_url, tls)
        console = consolesetup.prepare(cfg, data)
        cfg = console.config
        # fail here, once, rather than in four services; the routes are applied as admin
        admin = (
            {natsauth.USER_ENV: "admin", natsauth.PASSWORD_ENV: passwords["admin"]}
            if passwords
            else {}
        )
        checked = parse_config(cfg, {**os.environ, **admin, **console.env})
        try:
            revision = await _apply_routes(checked, cfg.get("routes") or [], opts.config_path)
            _say(
                f"routes           revision {revision} ({len(checked.routes)} route(s)) in NATS KV"
            )
        except (OSError, TimeoutError, nats.errors.Error, ConnectFailedError) as e:
            _say(f"routes           not stored in NATS KV ({e!r}): services read the config file")
        cfg_path = data / "vebus.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        _say(f"config           {cfg_path}")

        services = []
        for name in names.SERVICES:
            for replica in range(1, opts.scale.get(name, 1) + 1):
                port = opts.health_ports[name] if replica == 1 else 0
                if not port or not _port_free(port):
                    port = embedded.free_port()
                label = name if opts.scale.get(name, 1) == 1 else f"{name}-{replica}"
                args = [
                    sys.executable,
                    "-m",
                    names.service_module(name),
                    "--config",
                    str(cfg_path),
                    "--health-port",
                    str(port),
                ]
                own = (
                    {natsauth.USER_ENV: name, natsauth.PASSWORD_ENV: passwords[name]}
                    if passwords
                    else None
                )
                if name in ("deadletter", "console"):
                    own = {**(own or {}), **console.env}
                if name == "console":
                    own = {**(own or {}), **_console_listen(cfg, replica)}
                services.append(_Service(label, args, logs / f"{label}.log", opts.echo, own))
                _say(f"{label:<16} http://127.0.0.1:{port}/readyz  (log {logs / label}.log)")
                if name == "console":
                    url = (own or {}).get(names.ENV_CONSOLE_LISTEN) or _console_address(cfg)
                    hint = (
                        f"sign in with the token {names.ENV_CONSOLE_TOKEN} in {console.token_file}"
                        if console.token_file
                        else "sign in as a user of console.users"
                    )
                    _say(f"{'':<16} console at http://{url}/  ({hint})")
        _say("press Ctrl-C to stop; `vebus demo` in another terminal makes events")

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        tasks = [asyncio.create_task(_supervise(s, stopping)) for s in services]
        tasks += [asyncio.create_task(_watch(node, stopping)) for node in nodes]
        await stopping.wait()
        _say("stopping")
        # the collector first, so nothing new enters while the others finish
        for svc in services:
            await _stop(svc)
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0
    finally:
        for node in reversed(nodes):
            node.proc.stop()


def _console_address(cfg: dict[str, Any]) -> str:
    return str((cfg.get("console") or {}).get("listen") or f"127.0.0.1:{names.CONSOLE_PORT}")


def _console_listen(cfg: dict[str, Any], replica: int) -> dict[str, str]:
    """A free port for a second console replica, or when the configured one is taken."""
    host, _, port = _console_address(cfg).rpartition(":")
    if replica == 1 and port.isdigit() and _port_free(int(port)):
        return {}
    return {names.ENV_CONSOLE_LISTEN: f"{host}:{embedded.free_port()}"}


def _admin_hint(auth_path: Path) -> str:
    """How the `vebus` command in another terminal gets the admin user."""
    if auth_path.resolve() == (Path.cwd() / natsauth.DEFAULT_AUTH_PATH).resolve():
        return "`vebus` commands run in this folder log in as admin from it"
    return (
        f"for `vebus` commands: export {natsauth.USER_ENV}=admin "
        f"{natsauth.PASSWORD_ENV}=$(sed -n 's/^VEBUS_NATS_ADMIN_PASSWORD=//p' {auth_path})"
    )


async def _apply_routes(config: Config, raw_routes: list[Any], source: Path | None) -> int:
    """Store the config file's routes as the running route set: in an embedded run the file
    is the source of truth, and `vebus routes apply` changes them until the next start.

    An unchanged route set keeps its revision (no new revision at every start).
    """
    import msgspec

    from vebus.routing.store import open_route_store

    nc = await connect_once(config.nats, url=config.nats.url, user=config.nats.user,
                            password=config.nats.password, name="vebus-up")  # fmt: skip
    try:
        store = await open_route_store(nc.jetstream(), replicas=config.nats.replicas)
        current = await store.get()
        if current is not None and msgspec.json.encode(current[0].routes) == msgspec.json.encode(
            raw_routes
        ):
            return current[1]
        return await store.put(raw_routes, source=str(source or ""))
    finally:
        await nc.close()


def _vcsim_cache() -> Path:
    root = embedded.repo_root()
    if root is not None:
        return root / "build"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vebus"


def load_raw(path: Path | None) -> dict[str, Any]:
    """The user's YAML as a dict, `${ENV}` references kept for the services to resolve.

    ConfigError (naming the file) when it cannot be read or parsed.
    """
    if path is None:
        return {}
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded
