"""NATS users for `vebus up --nats-auth`: one generated password per user of
deploy/nats/auth.conf, kept in `<data-dir>/nats-auth.env` so that a restart (and the
`vebus` command in another terminal) finds the same ones.

The file is the nats-server environment auth.conf reads (`VEBUS_NATS_<USER>_PASSWORD=...`),
readable by its owner only. Passwords never go on a command line, into the effective
config, or into a log.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from urllib.parse import urlsplit

from vebus import names

__all__ = [
    "AUTH_FILE",
    "DEFAULT_AUTH_PATH",
    "PASSWORD_ENV",
    "USERS",
    "USER_ENV",
    "auth_conf_text",
    "is_local_url",
    "load_or_create",
    "password_var",
    "read_env_file",
]

USERS = (*names.SERVICES, "subscriber", "admin")
AUTH_FILE = "nats-auth.env"
#: where the `vebus` command looks when nothing names a user: `vebus up`'s default data dir
DEFAULT_AUTH_PATH = Path(".vebus") / AUTH_FILE
#: the variables a service's config refers to (`${VEBUS_NATS_USER}`), which the `vebus`
#: command also honours when the config names no user
USER_ENV, PASSWORD_ENV = names.ENV_NATS_USER, names.ENV_NATS_PASSWORD

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def password_var(user: str) -> str:
    """The variable auth.conf takes `user`'s password from."""
    return f"VEBUS_NATS_{user.upper()}_PASSWORD"


def is_local_url(url: str) -> bool:
    """True when every server of a (comma-separated) NATS URL is on this machine."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    return bool(servers) and all(urlsplit(u).hostname in _LOCAL_HOSTS for u in servers)


def _new_password() -> str:
    # letters and digits, starting with a letter: nats-server parses an environment value
    # like a config token, so "1k" would become the number 1024
    alphabet = string.ascii_letters + string.digits
    return secrets.choice(string.ascii_letters) + "".join(
        secrets.choice(alphabet) for _ in range(31)
    )


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines of an env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip()
    return out


def load_or_create(data_dir: Path) -> tuple[Path, dict[str, str]]:
    """The password of every user, by user; generated for those `data_dir` has none of.

    The file is written with mode 0600 before any password goes into it, and a file
    others could read is narrowed to 0600 again.
    """
    path = data_dir / AUTH_FILE
    known = read_env_file(path) if path.exists() else {}
    passwords = {u: known.get(password_var(u)) or _new_password() for u in USERS}
    if any(known.get(password_var(u)) != pw for u, pw in passwords.items()):
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(
                "# NATS passwords of `vebus up --nats-auth` (generated; kept across restarts).\n"
                "# admin is for the vebus command: commands run in the folder `vebus up` ran\n"
                f"# in read this file; elsewhere set {USER_ENV}=admin and {PASSWORD_ENV}.\n"
            )
            for user, pw in passwords.items():
                f.write(f"{password_var(user)}={pw}\n")
    os.chmod(path, 0o600)
    return path, passwords


def auth_conf_text() -> str:
    """deploy/nats/auth.conf, from the vebus checkout this package runs from."""
    from vebus.local.embedded import repo_root

    root = repo_root()
    conf = root / "deploy" / "nats" / "auth.conf" if root is not None else None
    if conf is None or not conf.is_file():
        raise FileNotFoundError(
            "--nats-auth applies deploy/nats/auth.conf, which ships with a vebus checkout; "
            "run vebus up from one, or run nats-server yourself with that file"
        )
    return conf.read_text(encoding="utf-8")
