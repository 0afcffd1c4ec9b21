"""`vebus up`: the whole bus on this machine."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import click

from vebus import names
from vebus.cli._common import echo_config_errors, fail
from vebus.config import parse_config
from vebus.errors import ConfigError

__all__ = ["up"]

#: what nats-server takes as sync_interval: `always`, or a Go duration of one unit
_SYNC_INTERVAL = re.compile(r"always|[1-9][0-9]*(ms|s|m|h)")


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The vebus.yaml to run (default: ./vebus.yaml if it exists, else the built-in demo).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".vebus"),
    show_default=True,
    help="Where JetStream stores its data, and where logs and the effective config go.",
)
@click.option(
    "--nats-port",
    type=int,
    default=names.NATS_PORT,
    show_default=True,
    help="Client port of the (first) nats-server; a cluster uses the next ones too.",
)
@click.option(
    "--nats-cluster",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Run this many nats-server processes as one JetStream cluster (3: streams R3).",
)
@click.option(
    "--nats-auth",
    is_flag=True,
    help="Require a NATS login: each service connects as its own user of "
    "deploy/nats/auth.conf, with passwords generated into <data-dir>/nats-auth.env (mode "
    "0600, kept across restarts). `vebus` commands run in the same folder log in as its "
    "admin user from .vebus/nats-auth.env; elsewhere, or with another --data-dir, set "
    "VEBUS_NATS_USER=admin and VEBUS_NATS_PASSWORD. Without it, NATS on 127.0.0.1 takes any "
    "local client, e.g. `nats sub '>'`.",
)
@click.option(
    "--nats-tls",
    is_flag=True,
    help="TLS on every NATS connection, clients and cluster routes, each side verified: a "
    "local CA and certificates are made in <data-dir>/tls (kept across restarts) and the "
    "services present the client certificate. `vebus` commands run in the same folder use "
    "it by themselves; elsewhere give nats.tls (ca_file, cert_file, key_file) in a config.",
)
@click.option(
    "--nats-sync-interval",
    metavar="always|DURATION",
    default=None,
    help="JetStream's sync_interval on every node: `always` fsyncs before each "
    "acknowledgement (no acknowledged event lost when every node loses power at once, at a "
    "cost in throughput: loadtest/RESULTS.md); a duration such as 30s or 2m fsyncs that "
    "often. Default: nats-server's own (2m). See docs/guarantees.md.",
)
@click.option(
    "--scale",
    "scale",
    multiple=True,
    metavar="SERVICE=N",
    help="Run N replicas of a service, e.g. --scale dispatcher=2 (repeatable).",
)
@click.option("--vcsim-port", type=int, default=names.VCSIM_PORT, show_default=True)
@click.option("--quiet", is_flag=True, help="Do not echo the services' output (logs only).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=lambda: os.environ.get(names.ENV_LOG_FORMAT, "text"),
    show_default="text, or $VEBUS_LOG_FORMAT",
    help="The services' log lines: text, or JSON objects (event_id, route, sink, trace_id).",
)
def up(
    config_path: Path | None,
    data_dir: Path,
    nats_port: int,
    nats_cluster: int,
    nats_auth: bool,
    nats_tls: bool,
    nats_sync_interval: str | None,
    scale: tuple[str, ...],
    vcsim_port: int,
    quiet: bool,
    log_format: str,
) -> None:
    """Run vebus on this machine: nats-server with JetStream, and the collector, filter,
    dispatcher, deadletter and console services, each its own process (restarted if it dies;
    the console on http://127.0.0.1:8090/, its sign-in token in <data-dir>/console.env).

    With no vCenter in the config, the vCenter simulator is started on 127.0.0.1:8989
    and a `console` route prints every event, so events show at once; run `vebus demo`
    in another terminal to make more. Ctrl-C stops everything.

    \b
    Examples:
      vebus up                       # simulator, console route
      vebus up --config vebus.yaml   # your vCenters and routes
      vebus up --nats-cluster 3 --scale dispatcher=2 --scale filter=2
      vebus up --nats-auth           # NATS users and passwords (in .vebus/nats-auth.env)
      vebus up --nats-tls            # TLS to NATS and between its nodes (.vebus/tls)
      vebus up --nats-cluster 3 --nats-sync-interval always   # survives a power cut
    """
    from vebus.local.supervisor import UpOptions, load_raw, run_up

    os.environ[names.ENV_LOG_FORMAT] = log_format  # the services inherit our environment

    replicas: dict[str, int] = {}
    for item in scale:
        name, _, count = item.partition("=")
        if name not in names.SERVICES or not count.isdigit() or not 1 <= int(count) <= 16:
            fail(
                f"--scale {item}: expected SERVICE=N with SERVICE one of "
                f"{', '.join(names.SERVICES)} and N from 1 to 16",
                2,
            )
        replicas[name] = int(count)

    if nats_sync_interval is not None and not _SYNC_INTERVAL.fullmatch(nats_sync_interval):
        fail(
            f"--nats-sync-interval {nats_sync_interval}: expected `always` or a duration "
            "such as 500ms, 30s, 2m, 1h",
            2,
        )

    if config_path is None and Path("vebus.yaml").exists():
        config_path = Path("vebus.yaml")
    try:
        raw = load_raw(config_path)  # a --config that does not exist: ConfigError
        if nats_auth:
            _check_auth_target(raw, config_path, "--nats-auth")
        if nats_tls:
            _check_auth_target(raw, config_path, "--nats-tls")
        if raw:
            parse_config(raw)
    except ConfigError as e:
        echo_config_errors(str(config_path), e.errors)
        raise SystemExit(2) from None
    except ValueError as e:
        fail(str(e), 2)
    opts = UpOptions(
        config_path=config_path,
        data_dir=data_dir,
        nats_port=nats_port,
        nats_cluster=nats_cluster,
        nats_auth=nats_auth,
        nats_tls=nats_tls,
        nats_sync_interval=nats_sync_interval,
        scale=replicas,
        vcsim_port=vcsim_port,
        echo=not quiet,
    )
    try:
        status = asyncio.run(run_up(opts, raw))
    except KeyboardInterrupt:
        status = 0
    except Exception as e:  # a start-up failure: say what, not where in the code
        fail(str(e))
    raise SystemExit(status)


def _check_auth_target(raw: dict[str, Any], config_path: Path | None, flag: str) -> None:
    """--nats-auth and --nats-tls secure the nats-server `vebus up` starts, not a remote
    one: refuse rather than send generated users or certificates to a server that does not
    know them."""
    from vebus.local.natsauth import is_local_url

    section = raw.get("nats")
    nats_cfg: dict[str, Any] = section if isinstance(section, dict) else {}
    url = str(nats_cfg.get("url") or "")
    if url and not is_local_url(url):
        fail(
            f"{flag}: {config_path}: nats.url {url} is a server vebus up does not start; "
            "its users and certificates are configured on that server (give nats.user, "
            f"nats.password and nats.tls in the config, and run without {flag})",
            2,
        )
    if flag == "--nats-auth" and (nats_cfg.get("user") or nats_cfg.get("password")):
        click.echo(
            f"vebus up: --nats-auth: nats.user/nats.password in {config_path} are not used: "
            "each service logs in as its own generated user",
            err=True,
        )
