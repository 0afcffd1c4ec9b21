"""`vebus console token|hash`: the hashes console.users takes, in the forms the docs give."""

from __future__ import annotations

import re

from click.testing import CliRunner

from vebus.cli import main
from vebus.config import parse_config
from vebus.passwords import verify_secret


def _runner() -> CliRunner:
    return CliRunner()


def test_token_shows_the_token_once_and_prints_a_hash_that_checks_it() -> None:
    out = _runner().invoke(main, ["console", "token"])
    assert out.exit_code == 0, out.output
    token = out.stderr.strip().rsplit(" ", 1)[1]
    digest = out.stdout.strip()
    assert token not in out.stdout, "the token itself must not go where >> .env sends it"
    assert verify_secret(token, digest)
    assert not verify_secret(token + "x", digest)


def test_token_env_line_is_single_quoted_and_reads_back_as_a_console_user() -> None:
    out = _runner().invoke(main, ["console", "token", "--env", "VEBUS_CONSOLE_TOKEN_HASH"])
    assert out.exit_code == 0, out.output
    m = re.fullmatch(r"VEBUS_CONSOLE_TOKEN_HASH='(scrypt\$[^']+)'", out.stdout.strip())
    assert m, out.stdout
    token = out.stderr.strip().rsplit(" ", 1)[1]
    cfg = parse_config(
        {"console": {"users": [{"name": "admin", "role": "operator",
                                "token_hash": "${VEBUS_CONSOLE_TOKEN_HASH}"}]}},
        {"VEBUS_CONSOLE_TOKEN_HASH": m.group(1)},
    )  # fmt: skip
    (user,) = cfg.console.users
    assert user.token_hash
    assert verify_secret(token, user.token_hash)


def test_hash_reads_a_password_from_standard_input() -> None:
    out = _runner().invoke(main, ["console", "hash"], input="correct horse\n")
    assert out.exit_code == 0, out.output
    assert verify_secret("correct horse", out.stdout.strip())


def test_bad_input_is_refused_with_a_reason() -> None:
    empty = _runner().invoke(main, ["console", "hash"], input="\n")
    assert empty.exit_code == 2
    assert "empty password" in empty.stderr
    bad = _runner().invoke(main, ["console", "token", "--env", "1-bad"])
    assert bad.exit_code == 2
    assert "expected a variable name" in bad.stderr
    assert bad.stdout == ""
