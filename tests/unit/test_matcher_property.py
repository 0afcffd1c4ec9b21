"""Property test: the compiled index (and each compiled pattern) against a plain evaluator.

The plain evaluator below reads the pattern JSON directly, one rule per line of the
EventBridge semantics that vebus.events.patterns documents; hypothesis draws patterns and events
from one small vocabulary so that they often meet, and checks that `PatternIndex.matching`
returns exactly the patterns the plain evaluator accepts.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vebus.events.patterns import PatternIndex, compile_pattern

# --- the plain evaluator ----------------------------------------------------------------------

MISSING: Any = object()


def flatten(value: Any) -> list[Any]:
    """The items of an array, arrays inside it flattened."""
    out: list[Any] = []
    for item in value:
        out.extend(flatten(item) if isinstance(item, list) else [item])
    return out


def leaf_values(value: Any) -> list[Any]:
    """The values a leaf sees at a field: none if absent or an object, an array's non-objects."""
    if value is MISSING or isinstance(value, dict):
        return []
    if isinstance(value, list):
        return [item for item in flatten(value) if not isinstance(item, dict)]
    return [value]


def objects(value: Any) -> list[dict[str, Any]]:
    """The objects a nested pattern is tried against (an empty one when there are none)."""
    if isinstance(value, dict):
        return [value]
    found = (
        [item for item in flatten(value) if isinstance(item, dict)]
        if isinstance(value, list)
        else []
    )
    return found or [{}]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(expected: Any, value: Any) -> bool:
    """Exact match: strings with strings, numbers numerically, booleans, null."""
    if expected is None or value is None:
        return expected is None and value is None
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool) and expected == value
    if isinstance(expected, str) or isinstance(value, str):
        return isinstance(expected, str) and isinstance(value, str) and expected == value
    return is_number(expected) and is_number(value) and expected == value


def glob(pattern: str, text: str) -> bool:
    """Wildcard by recursion over characters: `*` any run, `\\*` and `\\\\` literal."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    if pattern[0] == "\\":
        return bool(text) and text[0] == pattern[1] and glob(pattern[2:], text[1:])
    return bool(text) and text[0] == pattern[0] and glob(pattern[1:], text[1:])


def affix(arg: Any, value: str, test: str) -> bool:
    """prefix/suffix with a string or {"equals-ignore-case": string} operand."""
    if isinstance(arg, dict):
        text, value = arg["equals-ignore-case"].casefold(), value.casefold()
    else:
        text = arg
    return value.startswith(text) if test == "prefix" else value.endswith(text)


def accepts(op: str, arg: Any, value: Any) -> bool:
    """Whether one operator accepts one leaf value."""
    if op in ("prefix", "suffix"):
        return isinstance(value, str) and affix(arg, value, op)
    if op == "equals-ignore-case":
        return isinstance(value, str) and value.casefold() == arg.casefold()
    if op == "wildcard":
        return isinstance(value, str) and glob(arg, value)
    if op == "numeric":
        if not is_number(value) or math.isnan(value):
            return False
        return all(
            {
                "=": value == bound,
                ">": value > bound,
                ">=": value >= bound,
                "<": value < bound,
                "<=": value <= bound,
            }[cmp]
            for cmp, bound in zip(arg[::2], arg[1::2], strict=True)
        )
    if op == "cidr":
        try:
            address = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            return False
        network = ipaddress.ip_network(arg, strict=False)
        return address is not None and address.version == network.version and address in network
    if op == "anything-but":
        if isinstance(arg, dict):
            ((inner, operand),) = arg.items()
            if inner == "equals-ignore-case":
                texts = operand if isinstance(operand, list) else [operand]
                excluded = any(accepts(inner, text, value) for text in texts)
            else:
                excluded = accepts(inner, operand, value)
            return not excluded
        excluded_values = arg if isinstance(arg, list) else [arg]
        return not any(equal(item, value) for item in excluded_values)
    raise AssertionError(op)


def leaf_matches(alternatives: list[Any], values: list[Any]) -> bool:
    for alt in alternatives:
        if isinstance(alt, dict):
            ((op, arg),) = alt.items()
            if op == "exists":
                if bool(values) == arg:
                    return True
            elif any(accepts(op, arg, value) for value in values):
                return True
        elif any(equal(alt, value) for value in values):
            return True
    return False


def plain_matches(pattern: dict[str, Any], obj: dict[str, Any]) -> bool:
    """The whole pattern language in one recursive function."""
    for key, spec in pattern.items():
        if key == "$or":
            ok = any(plain_matches(branch, obj) for branch in spec)
        elif isinstance(spec, dict):
            ok = any(plain_matches(spec, sub) for sub in objects(obj.get(key, MISSING)))
        else:
            ok = leaf_matches(spec, leaf_values(obj.get(key, MISSING)))
        if not ok:
            return False
    return True


# --- strategies -------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
TEXTS = ["", "a", "ab", "abc", "Ab", "AB", "b", "ba", "x*y", "a\\b", "10.0.0.1", "10.1.2.3", "::1"]
NUMBERS = [0, 1, 1.0, 2, 2.5, -1, 10, 3e2]
SCALARS = st.one_of(st.sampled_from(TEXTS), st.sampled_from(NUMBERS), st.booleans(), st.none())
EVENT_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)
EVENTS = st.dictionaries(KEYS, EVENT_VALUES, min_size=1, max_size=3)

SHORT = st.sampled_from(["", "a", "A", "ab", "b", "B", "c"])
NONEMPTY = st.sampled_from(["a", "A", "ab", "b", "B", "c"])
WILDCARDS = st.sampled_from(["*", "a*", "*b", "a*b", "*a*", "ab", "x\\*y", "a\\\\b", "A*"])
NUMBER = st.sampled_from([-1, 0, 1, 1.5, 2, 10, 300])


@st.composite
def numeric(draw: st.DrawFn) -> list[Any]:
    shape = draw(st.sampled_from(["=", "low", "high", "range"]))
    a, b = sorted(draw(st.lists(NUMBER, min_size=2, max_size=2, unique=True)))
    low, high = draw(st.sampled_from([">", ">="])), draw(st.sampled_from(["<", "<="]))
    if shape == "=":
        return ["=", a]
    if shape == "low":
        return [low, a]
    if shape == "high":
        return [high, b]
    return [low, a, high, b]


ANYTHING_BUT = st.one_of(
    SHORT,
    NUMBER,
    st.lists(SHORT, min_size=1, max_size=3),
    st.lists(NUMBER, min_size=1, max_size=3),
    st.builds(lambda t: {"prefix": t}, NONEMPTY),
    st.builds(lambda t: {"suffix": t}, NONEMPTY),
    st.builds(lambda t: {"wildcard": t}, WILDCARDS),
    st.builds(lambda t: {"equals-ignore-case": t}, SHORT),
    st.builds(lambda t: {"equals-ignore-case": t}, st.lists(SHORT, min_size=1, max_size=2)),
)
OPERATORS = st.one_of(
    st.builds(lambda t: {"prefix": t}, SHORT),
    st.builds(lambda t: {"prefix": {"equals-ignore-case": t}}, SHORT),
    st.builds(lambda t: {"suffix": t}, SHORT),
    st.builds(lambda t: {"suffix": {"equals-ignore-case": t}}, SHORT),
    st.builds(lambda t: {"equals-ignore-case": t}, SHORT),
    st.builds(lambda t: {"wildcard": t}, WILDCARDS),
    st.builds(lambda v: {"anything-but": v}, ANYTHING_BUT),
    st.builds(lambda v: {"numeric": v}, numeric()),
    st.builds(lambda v: {"exists": v}, st.booleans()),
    st.builds(lambda v: {"cidr": v}, st.sampled_from(["10.0.0.0/24", "10.0.0.0/8", "::/0"])),
)
ALTERNATIVE = st.one_of(SCALARS, OPERATORS)
LEAF = st.lists(ALTERNATIVE, min_size=1, max_size=3)


def fields(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An object of fields, sometimes with an $or of two or three such objects."""
    plain = st.dictionaries(KEYS, inner, min_size=1, max_size=3)
    with_or = st.builds(
        lambda base, branches: {**base, "$or": branches},
        st.dictionaries(KEYS, inner, max_size=2),
        st.lists(plain, min_size=2, max_size=3),
    )
    return st.one_of(plain, with_or)


PATTERNS = st.recursive(LEAF, fields, max_leaves=6).filter(lambda p: isinstance(p, dict))


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=PATTERNS, events=st.lists(EVENTS, min_size=1, max_size=5))
def test_compiled_pattern_agrees_with_the_plain_evaluator(
    pattern: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    compiled = compile_pattern(pattern)
    for event in events:
        expected = plain_matches(pattern, event)
        assert compiled.matches(event) is expected, (pattern, event)
        assert compiled.explain(event).matched is expected, (pattern, event)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patterns=st.lists(st.one_of(st.none(), PATTERNS), min_size=1, max_size=12),
    events=st.lists(EVENTS, min_size=1, max_size=6),
)
def test_index_agrees_with_the_plain_evaluator(
    patterns: list[dict[str, Any] | None], events: list[dict[str, Any]]
) -> None:
    index = PatternIndex(
        (position, None if p is None else compile_pattern(p)) for position, p in enumerate(patterns)
    )
    for event in events:
        expected = [i for i, p in enumerate(patterns) if p is None or plain_matches(p, event)]
        assert index.matching(event) == expected, (patterns, event)


MANY_EXACT = [{"a": [f"v{i}"]} for i in range(500)] + [{"b": {"c": [{"prefix": "a"}]}}]


@functools.cache
def _many_exact_index() -> PatternIndex:
    """Compiled once: what varies between examples is the events, not the routes."""
    return PatternIndex((i, compile_pattern(p)) for i, p in enumerate(MANY_EXACT))


@settings(max_examples=200, deadline=None)
@given(events=st.lists(EVENTS, min_size=1, max_size=5))
def test_index_of_many_exact_routes_meets_few_candidates(events: list[dict[str, Any]]) -> None:
    patterns, index = MANY_EXACT, _many_exact_index()
    for event in [*events, {"a": "v7"}, {"a": ["v1", "v499"], "b": [{"c": "ab"}]}]:
        expected = [i for i, p in enumerate(patterns) if plain_matches(p, event)]
        assert index.matching(event) == expected
        assert len(index.candidates(event)) <= len(expected) + 1
