"""A nats-server with deploy/nats/auth.conf: the users and permissions compose and Kubernetes
use, with test passwords (the `auth_nats` fixture of tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vebus import names
from vebus.local.embedded import ManagedProcess, free_port, start_nats
from vebus.local.natsauth import USERS, password_var

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {name: f"{name}-secret-{n}" for n, name in enumerate(USERS)}
SERVICES = names.SERVICES


class AuthNats:
    def __init__(self, proc: ManagedProcess, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"nats://127.0.0.1:{port}"


def start_auth_nats(tmp_path: Path) -> AuthNats:
    port = free_port()
    conf = tmp_path / "nats.conf"
    # nats-server resolves include paths against the including file's folder
    shutil.copy(REPO / "deploy" / "nats" / "auth.conf", tmp_path / "auth.conf")
    conf.write_text(f'port: {port}\ninclude "auth.conf"\n')  # JetStream: start_nats
    env = {password_var(name): pw for name, pw in PASSWORDS.items()}
    os.environ.update(env)  # start_nats passes its environment on to nats-server
    try:
        proc, port = start_nats(tmp_path / "js", port=port, extra_args=["-c", str(conf)])
    finally:
        for key in env:
            os.environ.pop(key, None)
    return AuthNats(proc, port)
