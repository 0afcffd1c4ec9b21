"""The passwords `vebus up --nats-auth` generates: kept across restarts, owner-only, and in
a form nats-server reads back as the same string."""

from __future__ import annotations

import stat
from pathlib import Path

from vebus.local.natsauth import USERS, is_local_url, load_or_create, password_var, read_env_file


def test_passwords_are_generated_once_and_kept(tmp_path: Path) -> None:
    path, first = load_or_create(tmp_path / "data")
    assert path == tmp_path / "data" / "nats-auth.env"
    assert set(first) == set(USERS)
    assert len(set(first.values())) == len(USERS), "one password per user"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _, again = load_or_create(tmp_path / "data")
    assert again == first


def test_passwords_start_with_a_letter(tmp_path: Path) -> None:
    # nats-server parses an environment value like a config token: "1k" would be 1024
    for n in range(20):
        _, passwords = load_or_create(tmp_path / str(n))
        assert all(pw[0].isalpha() and pw.isalnum() and len(pw) >= 32 for pw in passwords.values())


def test_a_missing_user_is_added_and_a_readable_file_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "nats-auth.env"
    path.write_text(f"# old\n{password_var('admin')}=kept\n")
    path.chmod(0o644)
    _, passwords = load_or_create(tmp_path)
    assert passwords["admin"] == "kept"
    assert read_env_file(path) == {password_var(u): passwords[u] for u in USERS}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_local_urls() -> None:
    assert is_local_url("nats://127.0.0.1:4222,nats://localhost:4223")
    assert not is_local_url("nats://127.0.0.1:4222,nats://nats-2:4222")
    assert not is_local_url("${NATS_URL}")
