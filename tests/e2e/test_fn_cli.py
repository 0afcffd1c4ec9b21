"""`vebus fn new` and `vebus fn test` as docs/functions.md has a newcomer use them: in an
empty folder, with the `vebus` command of a checkout, and the exit status of each outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

VEBUS = str(Path(sys.executable).parent / "vebus")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VEBUS, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_new_then_test_in_an_empty_folder(tmp_path: Path) -> None:
    made = run("fn", "new", "hello", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "functions" / "hello"
    assert sorted(p.name for p in folder.iterdir()) == ["event.json", "handler.py",
                                                        "test_handler.py"]  # fmt: skip
    tried = run("fn", "test", "hello", "--event", "functions/hello/event.json", cwd=tmp_path)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "function hello: done in" in tried.stdout
    assert '"vm": "test-01"' in tried.stdout
    assert "VmPoweredOnEvent.v0: test-01" in tried.stderr, "its log, as it ran"
    # the generated test passes as written
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "functions/hello/test_handler.py"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr
    # the printed snippet is a valid config that declares it
    snippet = made.stdout.split("\n\n", 1)[1]
    (tmp_path / "vebus.yaml").write_text(snippet)
    assert yaml.safe_load(snippet)["functions"][0]["name"] == "hello"
    assert run("config", "check", "vebus.yaml", cwd=tmp_path).returncode == 0
    again = run("fn", "test", "hello", "--event", "functions/hello/event.json", "--json",
                cwd=tmp_path)  # fmt: skip
    assert json.loads(again.stdout)["status"] == "done"
    assert run("fn", "new", "hello", cwd=tmp_path).returncode == 2, "it exists already"


def test_the_exit_status_says_how_it_ended(tmp_path: Path) -> None:
    cases = {
        "raises": ("raise ValueError('no such VM')", 1, "ValueError: no such VM"),
        "rejects": ("raise Reject('not mine')", 4, "rejects: reject"),
        "later": ("raise RetryLater('busy', after=5)", 3, "retry after 5 s"),
    }
    for name, (body, _, _) in cases.items():
        folder = tmp_path / "functions" / name
        folder.mkdir(parents=True)
        head = "from vebus_functions import Reject, RetryLater\n\n"
        (folder / "handler.py").write_text(f"{head}def handle(event, ctx):\n    {body}\n")
    (tmp_path / "event.json").write_text(
        json.dumps({"specversion": "1.0", "id": "1", "source": "urn:s", "type": "t", "data": {}})
    )
    for name, (_, status, shown) in cases.items():
        tried = run("fn", "test", name, "--event", "event.json", cwd=tmp_path)
        assert tried.returncode == status, tried.stdout + tried.stderr
        assert shown in tried.stdout


def test_bad_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    missing = run("fn", "test", "nope", "--event", "x.json", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no function named 'nope'" in missing.stderr
    (tmp_path / "functions" / "f").mkdir(parents=True)
    (tmp_path / "functions" / "f" / "handler.py").write_text("def handle(e, c):\n    pass\n")
    (tmp_path / "bad.json").write_text("{")
    bad = run("fn", "test", "f", "--event", "bad.json", cwd=tmp_path)
    assert bad.returncode == 2
    assert "bad.json: not valid JSON" in bad.stderr
    assert "Traceback" not in bad.stderr
