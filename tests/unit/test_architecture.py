"""The import rules of docs/architecture.md hold, and a change that breaks one is caught.

`lint-imports` (import-linter, the contracts in pyproject.toml) runs in scripts/test; here
it runs on the tree as it is, and on a copy of it with one import that breaks each kind of
rule, to show each contract can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
SOURCES = [REPO / "shared" / "src", *sorted((REPO / "services").glob("*/src"))]


def _lint(roots: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(r) for r in roots)}
    return subprocess.run(
        [str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, timeout=120, env=env, check=False, cwd=REPO,
    )  # fmt: skip


def test_the_tree_keeps_every_contract() -> None:
    out = _lint(SOURCES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("shared/src/vebus/bus/kv.py", "import vebus.runtime.service", "each layer imports only"),
        ("shared/src/vebus/names.py", "import vebus.bus.publish", "each layer imports only"),
        ("shared/src/vebus/routing/router.py", "import vebus_filter.app", "imports a service"),
        ("services/filter/src/vebus_filter/app.py", "import vebus_dispatcher.app", "each other"),
        ("services/dispatcher/src/vebus_dispatcher/app.py", "import vebus.local.supervisor",
         "command line or the local tooling"),
    ],
)  # fmt: skip
def test_an_import_against_the_rules_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    roots = []
    for src in SOURCES:
        copy = tmp_path / src.relative_to(REPO)
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
        roots.append(copy)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = _lint(roots)
    assert out.returncode != 0
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), out.stdout
