"""vebus.names is the one place a name is written: no product module writes one out.

Every string constant of vebus.names that is distinctive (it contains `vebus`, `VEBUS`,
`$` or `Nats-`, or is a `ce-` header) and every port and JetStream error code is looked
for in the string and number literals of shared/src and services/*/src: a literal equal
to one, or a name-like literal (no white space) containing one of the longer ones
(`vebus.events` in `f"vebus.events.{x}"`), is a second copy of knowledge that must live in
one place. Prose (docstrings, help texts and messages: text with spaces) may mention a
stream or a variable by name, as config files, docs and tests may; generic words
(service names such as `filter`, the KV key `routes`) are not looked for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from vebus import names

REPO = Path(__file__).resolve().parents[2]
NAMES_FILE = REPO / "shared" / "src" / "vebus" / "names.py"
PRODUCT = sorted(
    p
    for root in [REPO / "shared" / "src", *sorted((REPO / "services").glob("*/src"))]
    for p in root.rglob("*.py")
    if p != NAMES_FILE
)


def _distinctive(value: str) -> bool:
    if value == names.SUBJECT_ROOT:
        return False  # the product's name, in package names, user agents, tracer names
    return any(m in value for m in ("vebus", "VEBUS", "$", "Nats-")) or (
        value.startswith(names.CE_PREFIX) and value != names.CE_PREFIX
    )


def _checked() -> tuple[dict[str, str], dict[int, str]]:
    """(string value -> constant name, int value -> constant name) of what is checked."""
    strings: dict[str, str] = {}
    numbers: dict[int, str] = {}
    for name in names.__all__:
        value = getattr(names, name)
        values = value.items() if isinstance(value, dict) else [(name, value)]
        for key, v in values:
            label = name if key == name else f"{name}[{key!r}]"
            if isinstance(v, str) and _distinctive(v):
                strings[v] = label
            elif isinstance(v, int) and not isinstance(v, bool) and v >= 1000:
                numbers[v] = label
            elif isinstance(v, frozenset | tuple):
                continue
    return strings, numbers


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _literals(path: Path) -> Iterator[tuple[int, object]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip.update(id(c) for c in ast.walk(node.value))
        if isinstance(node, ast.Constant) and id(node) not in skip:
            yield node.lineno, node.value


def test_the_check_looks_for_what_matters() -> None:
    strings, numbers = _checked()
    assert {"VEBUS_EVENTS", "vebus.dlq", "vebus-dispatch-", "Nats-Msg-Id"} <= strings.keys()
    assert {4222, 8181, 10077} <= numbers.keys()


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(REPO)))
def test_no_product_module_writes_out_a_name(path: Path) -> None:
    strings, numbers = _checked()
    long = [v for v in strings if len(v) >= 8]
    found = []
    for line, value in _literals(path):
        if isinstance(value, str):
            if value in strings:
                found.append(f"line {line}: {value!r} is names.{strings[value]}")
            elif not any(c.isspace() for c in value):
                for v in long:
                    if v in value:
                        found.append(f"line {line}: {value!r} contains names.{strings[v]}")
        elif isinstance(value, int) and not isinstance(value, bool) and value in numbers:
            found.append(f"line {line}: {value} is names.{numbers[value]}")
    assert not found, "use vebus.names instead:\n" + "\n".join(found)
