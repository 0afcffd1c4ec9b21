"""The console in tests: its users, an HTTP client that signs in, and headless Chromium."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from vebus.passwords import hash_secret

#: the users every console test configures
OPERATOR, OPERATOR_PASSWORD = "alice", "alice-console-pw"
VIEWER, VIEWER_TOKEN = "victor", "viewer-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
DLQ_TOKEN = "dlq-token-0123456789abcdef"
CHROMIUM = os.environ.get("VEBUS_CHROMIUM", "/usr/bin/chromium")
#: flags that work on these machines (no GPU, no network besides loopback, no sandbox as root)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@functools.cache
def _hashes() -> tuple[str, str, str]:
    return hash_secret(OPERATOR_PASSWORD), hash_secret(OPERATOR_TOKEN), hash_secret(VIEWER_TOKEN)


def console_section(listen: str, deadletter_url: str) -> dict[str, Any]:
    """`console:` with an operator (password and token) and a viewer (token)."""
    password, op_token, viewer_token = _hashes()
    return {
        "listen": listen,
        "deadletter_url": deadletter_url,
        "session_key": "k" * 40,
        "users": [
            {
                "name": OPERATOR,
                "role": "operator",
                "password_hash": password,
                "token_hash": op_token,
            },
            {"name": VIEWER, "role": "viewer", "token_hash": viewer_token},
        ],
    }


def require_chromium() -> None:
    """Skip, with one line saying why, where the browser tests cannot run; fail instead where
    scripts/setup would have installed Chromium (root with apt-get), so that a CI machine
    whose setup went wrong does not pass by skipping the console's browser tests."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("browser tests: playwright is not installed (uv sync)")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        why = f"browser tests: no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(why + "; scripts/setup installs it on this machine")
        pytest.skip(why)


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the browser tests save each page (VEBUS_CONSOLE_SCREENSHOTS: docs/console)."""
    out = Path(os.environ.get("VEBUS_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def csrf_of(html: str) -> str:
    m = re.search(r'data-csrf="([^"]*)"', html)
    assert m, html[:500]
    return m.group(1)
