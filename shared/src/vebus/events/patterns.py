"""EventBridge-style event patterns: compile once, then match or explain against a CloudEvent.

The event is a mapping of the CloudEvent attributes (``type``, ``source``, ``subject``,
extensions such as ``eventclass``) with the decoded JSON payload under ``data``. A pattern
has the event's shape: an object whose fields hold either a nested object (descend into
the event) or a non-empty array of alternatives (the leaf). Fields are ANDed, a leaf's
alternatives are ORed, and when the event value is an array the leaf matches if any
element matches (a nested object matches if any object element matches all of it).
Leaf alternatives, as in AWS EventBridge (the semantics of aws/event-ruler):

- ``"x"``, ``5``, ``true``, ``null``: exact match; numbers compare numerically (5 == 5.0),
  booleans never equal numbers.
- ``{"prefix": "x"}``, ``{"suffix": "x"}``, either with ``{"equals-ignore-case": "x"}``
  as the value; ``{"equals-ignore-case": "x"}``; ``{"wildcard": "a*b"}`` (``*`` matches
  any run of characters, ``\\*`` and ``\\\\`` are a literal star and backslash, ``**`` is
  refused). These match string values only.
- ``{"anything-but": v}``: v a string, a number, or a list of only strings or only numbers,
  or ``{"prefix" | "suffix" | "wildcard": "x"}``, or ``{"equals-ignore-case": "x" | [...]}``.
  Matches any present value not excluded (null included); never matches an absent field.
- ``{"numeric": [">", 0, "<=", 5]}``: ``=``, or a lower bound (``>``/``>=``) optionally
  followed by an upper bound (``<``/``<=``), or an upper bound alone; JSON numbers only.
- ``{"exists": true | false}``: whether the field has a leaf value (null counts, an object
  or an empty array does not).
- ``{"cidr": "10.0.0.0/24"}``: an IPv4 or IPv6 address string inside the network.
- ``"$or": [{...}, {...}]`` in place of a field, at any level: at least two sub-patterns,
  any of which may match.

:class:`PatternIndex` holds many compiled patterns (a filter's routes) and answers which
of them match an event at a cost that does not grow with their number (see "the index").
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from vebus.errors import PatternError

__all__ = [
    "OPERATORS",
    "Explanation",
    "Pattern",
    "PatternIndex",
    "compile_pattern",
    "explain_match",
]

OPERATORS: tuple[str, ...] = (
    "prefix",
    "suffix",
    "anything-but",
    "equals-ignore-case",
    "wildcard",
    "numeric",
    "exists",
    "cidr",
)
"""The operator names a leaf alternative may use (plus ``$or`` in place of a field)."""

_OR = "$or"
_NUMERIC_OPS = ("=", ">", ">=", "<", "<=")
_ANYTHING_BUT_OPS = ("prefix", "suffix", "equals-ignore-case", "wildcard")
_MISSING: Any = object()
_EMPTY: Mapping[str, Any] = MappingProxyType({})
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Explanation:
    """Whether a pattern matched an event, and the field(s) that decided it."""

    matched: bool
    reason: str

    def lines(self, label: str) -> list[str]:
        """What `vebus routes test` prints (and the console shows) for `label`, e.g.
        `route vm-off`: the verdict, then the reason indented."""
        if self.matched and not self.reason:
            return [f"matched: {label} has no match, so it takes every event"]
        return [f"{'matched' if self.matched else 'no match'}: {label}", f"  {self.reason}"]


# --- rendering ----------------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    """A value as JSON for a person to read, cut short if long."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # circular structure
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """What a pattern author wrote, for "got ..." in an error."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None or isinstance(value, str | bool | int | float):
        return _show(value)
    return f"a {type(value).__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


# --- event access -------------------------------------------------------------------------


def _flatten(items: Sequence[Any], out: list[Any], *, objects: bool) -> None:
    for item in items:
        if isinstance(item, list | tuple):
            _flatten(item, out, objects=objects)
        elif isinstance(item, Mapping) == objects:
            out.append(item)


def _leaf_values(value: Any) -> tuple[Any, ...]:
    """The leaf values at a field: none if absent, an object or an empty array."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return (value,)  # the common case first: exact type checks are the cheapest
    if isinstance(value, list | tuple):
        out: list[Any] = []
        _flatten(value, out, objects=False)
        return tuple(out)
    if value is _MISSING or isinstance(value, Mapping):
        return ()
    return (value,)


def _objects(value: Any) -> tuple[Mapping[str, Any], ...]:
    """The objects a nested pattern is tried against; an empty one if there are none."""
    if type(value) is dict or isinstance(value, Mapping):
        return (value,)
    if isinstance(value, list | tuple):
        out: list[Any] = []
        _flatten(value, out, objects=True)
        if out:
            return tuple(out)
    return (_EMPTY,)


# --- leaf matchers ------------------------------------------------------------------------


class _Matcher:
    """One alternative of a leaf, tested against the field's leaf values."""

    __slots__ = ()

    def test(self, values: tuple[Any, ...]) -> bool:
        for value in values:  # noqa: SIM110 (hot path: a loop is faster than any(genexpr))
            if self.accepts(value):
                return True
        return False

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def matched(self, values: tuple[Any, ...]) -> str:
        return f"matched {self.describe()}"

    def rejection(self, value: Any) -> str:
        return f"{_show(value)} does not match {self.describe()}"


@dataclass(frozen=True, slots=True, eq=False)
class _Exact(_Matcher):
    strings: frozenset[str]
    numbers: frozenset[int | float]
    booleans: frozenset[bool]
    null: bool
    shown: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in self.strings
        if value is None:
            return self.null
        if isinstance(value, bool):
            return value in self.booleans
        if isinstance(value, int | float):
            return value in self.numbers
        return False

    def describe(self) -> str:
        if len(self.shown) == 1:
            return self.shown[0]
        return "one of " + ", ".join(self.shown)

    def matched(self, values: tuple[Any, ...]) -> str:
        hit = next(value for value in values if self.accepts(value))
        return f"matched {_show(hit)}"


@dataclass(frozen=True, slots=True, eq=False)
class _Prefix(_Matcher):
    prefix: str
    ignore_case: bool

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            return value.casefold().startswith(self.prefix)
        return value.startswith(self.prefix)

    def describe(self) -> str:
        return f"prefix {'equals-ignore-case ' if self.ignore_case else ''}{_show(self.prefix)}"


@dataclass(frozen=True, slots=True, eq=False)
class _Suffix(_Matcher):
    suffix: str
    ignore_case: bool

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            return value.casefold().endswith(self.suffix)
        return value.endswith(self.suffix)

    def describe(self) -> str:
        return f"suffix {'equals-ignore-case ' if self.ignore_case else ''}{_show(self.suffix)}"


@dataclass(frozen=True, slots=True, eq=False)
class _EqualsIgnoreCase(_Matcher):
    folded: frozenset[str]
    shown: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.casefold() in self.folded

    def describe(self) -> str:
        inner = self.shown[0] if len(self.shown) == 1 else "[" + ", ".join(self.shown) + "]"
        return f"equals-ignore-case {inner}"


@dataclass(frozen=True, slots=True, eq=False)
class _Wildcard(_Matcher):
    text: str
    regex: re.Pattern[str]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and self.regex.fullmatch(value) is not None

    def describe(self) -> str:
        return f"wildcard {_show(self.text)}"


@dataclass(frozen=True, slots=True, eq=False)
class _Numeric(_Matcher):
    low: int | float | None
    low_inclusive: bool
    high: int | float | None
    high_inclusive: bool
    text: str

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        low, high = self.low, self.high
        if low is not None and not (value >= low if self.low_inclusive else value > low):
            return False  # written so that NaN (json.loads accepts it) never matches
        return high is None or (value <= high if self.high_inclusive else value < high)

    def describe(self) -> str:
        return f"numeric {self.text}"


@dataclass(frozen=True, slots=True, eq=False)
class _Cidr(_Matcher):
    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return address.version == self.network.version and address in self.network

    def describe(self) -> str:
        return f"cidr {_show(str(self.network))}"


@dataclass(frozen=True, slots=True, eq=False)
class _Exists(_Matcher):
    present: bool

    def test(self, values: tuple[Any, ...]) -> bool:
        return bool(values) == self.present

    def accepts(self, value: Any) -> bool:
        return self.present  # a value is there

    def describe(self) -> str:
        return f"exists {'true' if self.present else 'false'}"

    def matched(self, values: tuple[Any, ...]) -> str:
        return f"{'present' if self.present else 'absent'} (exists {_show(self.present)})"

    def rejection(self, value: Any) -> str:
        return f"{_show(value)} is present (expected exists false)"


@dataclass(frozen=True, slots=True, eq=False)
class _AnythingBut(_Matcher):
    strings: frozenset[str]
    numbers: frozenset[int | float]
    shown: str

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str):
            return value not in self.strings
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value not in self.numbers
        return True

    def describe(self) -> str:
        return f"anything-but {self.shown}"

    def rejection(self, value: Any) -> str:
        return f"{_show(value)} is excluded by anything-but"


@dataclass(frozen=True, slots=True, eq=False)
class _AnythingButOf(_Matcher):
    """anything-but over a string operator: values it does not accept (non-strings too)."""

    inner: _Matcher

    def accepts(self, value: Any) -> bool:
        return not (isinstance(value, str) and self.inner.accepts(value))

    def describe(self) -> str:
        return f"anything-but {self.inner.describe()}"

    def rejection(self, value: Any) -> str:
        return f"{_show(value)} is excluded by anything-but {self.inner.describe()}"


# --- pattern nodes ------------------------------------------------------------------------


class _Node(Protocol):
    def matches(self, obj: Mapping[str, Any]) -> bool: ...

    def explain(self, obj: Mapping[str, Any]) -> tuple[bool, str]: ...


@dataclass(frozen=True, slots=True, eq=False)
class _Leaf:
    key: str
    where: str
    matchers: tuple[_Matcher, ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        raw = obj.get(self.key, _MISSING)
        kind = type(raw)
        if kind is str or kind is int or kind is float or kind is bool or raw is None:
            # one value (the common case): ask each alternative about it directly
            for matcher in self.matchers:  # noqa: SIM110 (hot path, as in _Matcher.test)
                if matcher.accepts(raw):
                    return True
            return False
        values = _leaf_values(raw)
        for matcher in self.matchers:  # noqa: SIM110
            if matcher.test(values):
                return True
        return False

    def explain(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        raw = obj.get(self.key, _MISSING)
        values = _leaf_values(raw)
        for matcher in self.matchers:
            if matcher.test(values):
                return True, f"{self.where}: {matcher.matched(values)}"
        return False, f"{self.where}: {self._mismatch(raw, values)}"

    def _mismatch(self, raw: Any, values: tuple[Any, ...]) -> str:
        if not values:
            if raw is _MISSING:
                state = "field is absent"
            elif isinstance(raw, Mapping):
                state = "is an object, not a value"
            else:
                state = "has no values (an empty array, or only objects)"
            expected = " or ".join(matcher.describe() for matcher in self.matchers)
            return f"{state}; expected {expected}"
        if len(self.matchers) == 1 and len(values) == 1:
            return self.matchers[0].rejection(values[0])
        alternatives = ", ".join(matcher.describe() for matcher in self.matchers)
        return f"{_show(raw)} matches none of: {alternatives}"


@dataclass(frozen=True, slots=True, eq=False)
class _Nested:
    key: str
    where: str
    node: _Fields

    def matches(self, obj: Mapping[str, Any]) -> bool:
        raw = obj.get(self.key)
        if type(raw) is dict:
            return self.node.matches(raw)
        for sub in _objects(raw):  # noqa: SIM110 (hot path)
            if self.node.matches(sub):
                return True
        return False

    def explain(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        subs = _objects(obj.get(self.key))
        first_failure = ""
        for sub in subs:
            ok, reason = self.node.explain(sub)
            if ok:
                return True, reason
            first_failure = first_failure or reason
        if len(subs) > 1:
            return False, f"{self.where}: no element of the array matched ({first_failure})"
        return False, first_failure


@dataclass(frozen=True, slots=True, eq=False)
class _Or:
    branches: tuple[_Fields, ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for branch in self.branches:  # noqa: SIM110 (hot path)
            if branch.matches(obj):
                return True
        return False

    def explain(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        failures: list[str] = []
        for index, branch in enumerate(self.branches):
            ok, reason = branch.explain(obj)
            if ok:
                return True, f"$or[{index}]: {reason}"
            failures.append(f"[{index}] {reason}")
        return False, "no $or alternative matched: " + "; ".join(failures)


@dataclass(frozen=True, slots=True, eq=False)
class _Fields:
    conditions: tuple[_Node, ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (hot path)
            if not condition.matches(obj):
                return False
        return True

    def explain(self, obj: Mapping[str, Any]) -> tuple[bool, str]:
        reasons: list[str] = []
        for condition in self.conditions:
            ok, reason = condition.explain(obj)
            if not ok:
                return False, reason
            reasons.append(reason)
        return True, "; ".join(reasons)


@dataclass(frozen=True, slots=True, eq=False)
class Pattern:
    """A validated, immutable pattern; build it with :func:`compile_pattern`."""

    path: str
    _root: _Fields = field(repr=False)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the event (attributes, with the decoded payload under ``data``) matches."""
        return self._root.matches(event)

    def explain(self, event: Mapping[str, Any]) -> Explanation:
        """Like :meth:`matches`, with the reason: the first failing field, or every match."""
        matched, reason = self._root.explain(event)
        return Explanation(matched=matched, reason=reason)


def explain_match(pattern: Pattern | None, event: Mapping[str, Any]) -> Explanation:
    """Whether `pattern` matches `event` and why; None (a route without `match`) takes
    every event (an empty reason)."""
    if pattern is None:
        return Explanation(matched=True, reason="")
    return pattern.explain(event)


# --- compiler -----------------------------------------------------------------------------


def compile_pattern(pattern: Mapping[str, Any], *, path: str = "match") -> Pattern:
    """Validate a pattern and compile it; raise PatternError naming the first problem."""
    return Pattern(path=path, _root=_compile_object(pattern, path, ""))


def _compile_object(obj: Any, at: str, where: str) -> _Fields:
    if not isinstance(obj, Mapping):
        raise PatternError(at, f"expected an object of fields, got {_kind(obj)}")
    if not obj:
        raise PatternError(at, "expected a non-empty object of fields, got {}")
    conditions: list[_Node] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PatternError(at, f"field names must be strings, got {_kind(key)}")
        if key == _OR:
            conditions.append(_compile_or(value, f"{at}.{_OR}", where))
            continue
        key_at = f"{at}.{key}"
        key_where = f"{where}.{key}" if where else key
        if isinstance(value, Mapping):
            conditions.append(_Nested(key, key_where, _compile_object(value, key_at, key_where)))
        elif isinstance(value, list | tuple):
            conditions.append(_Leaf(key, key_where, _compile_leaf(value, key_at)))
        else:
            raise PatternError(
                key_at,
                f"expected an array of values or a nested object, got {_kind(value)}"
                f" (to match it exactly, write [{_show(value)}])",
            )
    return _Fields(tuple(conditions))


def _compile_or(value: Any, at: str, where: str) -> _Or:
    if not isinstance(value, list | tuple) or len(value) < 2:
        got = f"{len(value)} item(s)" if isinstance(value, list | tuple) else _kind(value)
        raise PatternError(at, f"expected an array of at least two sub-patterns, got {got}")
    return _Or(tuple(_compile_object(sub, f"{at}[{i}]", where) for i, sub in enumerate(value)))


def _compile_leaf(items: Sequence[Any], at: str) -> tuple[_Matcher, ...]:
    if not items:
        raise PatternError(at, "expected a non-empty array of values, got []")
    strings: set[str] = set()
    numbers: set[int | float] = set()
    booleans: set[bool] = set()
    null = False
    shown: list[str] = []
    operators: list[_Matcher] = []
    for index, item in enumerate(items):
        item_at = f"{at}[{index}]"
        if isinstance(item, Mapping):
            operators.append(_compile_operator(item, item_at))
            continue
        if isinstance(item, str):
            strings.add(item)
        elif item is None:
            null = True
        elif isinstance(item, bool):
            booleans.add(item)
        elif _finite_number(item):
            numbers.add(item)
        else:
            raise PatternError(
                item_at,
                "expected a string, a finite number, true, false, null or an operator object,"
                f" got {_kind(item)}",
            )
        shown.append(_show(item))
    if shown:
        exact = _Exact(
            frozenset(strings), frozenset(numbers), frozenset(booleans), null, tuple(shown)
        )
        operators.insert(0, exact)
    return tuple(operators)


def _compile_operator(item: Mapping[Any, Any], at: str) -> _Matcher:
    if len(item) != 1:
        names = ", ".join(_show(key) for key in item) or "none"
        raise PatternError(at, f"an operator object has exactly one key, got {names}")
    ((name, value),) = item.items()
    op_at = f"{at}.{name}"
    if name == "prefix":
        text, ignore_case = _affix_operand(value, op_at)
        return _Prefix(text.casefold() if ignore_case else text, ignore_case)
    if name == "suffix":
        text, ignore_case = _affix_operand(value, op_at)
        return _Suffix(text.casefold() if ignore_case else text, ignore_case)
    if name == "equals-ignore-case":
        return _EqualsIgnoreCase(frozenset({_string(value, op_at).casefold()}), (_show(value),))
    if name == "wildcard":
        return _compile_wildcard(value, op_at)
    if name == "anything-but":
        return _compile_anything_but(value, op_at)
    if name == "numeric":
        return _compile_numeric(value, op_at)
    if name == "exists":
        if not isinstance(value, bool):
            raise PatternError(op_at, f"expected true or false, got {_kind(value)}")
        return _Exists(value)
    if name == "cidr":
        text = _string(value, op_at)
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PatternError(
                op_at, f'expected an IPv4 or IPv6 network like "10.0.0.0/24", got {_show(text)}'
            ) from None
        return _Cidr(network)
    raise PatternError(
        at, f"unknown operator {_show(name)} (expected one of: {', '.join(OPERATORS)})"
    )


def _string(value: Any, at: str) -> str:
    if not isinstance(value, str):
        raise PatternError(at, f"expected a string, got {_kind(value)}")
    return value


def _affix_operand(value: Any, at: str) -> tuple[str, bool]:
    """The operand of prefix/suffix: a string, or {"equals-ignore-case": string}."""
    if isinstance(value, Mapping):
        if list(value) != ["equals-ignore-case"]:
            raise PatternError(
                at, f'expected a string or {{"equals-ignore-case": string}}, got {_show(value)}'
            )
        return _string(value["equals-ignore-case"], f"{at}.equals-ignore-case"), True
    return _string(value, at), False


def _compile_wildcard(value: Any, at: str) -> _Wildcard:
    text = _string(value, at)
    parts: list[str] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            following = text[index + 1 : index + 2]
            if following not in ("*", "\\"):
                raise PatternError(
                    at,
                    f"invalid escape at position {index} of {_show(text)}"
                    " (only \\* and \\\\ may be escaped)",
                )
            literal.append(following)
            index += 2
            continue
        if char == "*":
            if text[index + 1 : index + 2] == "*":
                raise PatternError(
                    at, f"consecutive wildcard characters at position {index} of {_show(text)}"
                )
            parts.append(re.escape("".join(literal)))
            parts.append(".*")
            literal = []
        else:
            literal.append(char)
        index += 1
    parts.append(re.escape("".join(literal)))
    return _Wildcard(text, re.compile("".join(parts), re.DOTALL))


def _compile_anything_but(value: Any, at: str) -> _Matcher:
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in _ANYTHING_BUT_OPS:
            raise PatternError(
                at,
                f"expected a string, a number, an array of them, or an object with one of:"
                f" {', '.join(_ANYTHING_BUT_OPS)}; got {_show(value)}",
            )
        ((name, operand),) = value.items()
        op_at = f"{at}.{name}"
        inner: _Matcher
        if name == "equals-ignore-case":
            if isinstance(operand, list | tuple):
                texts = _string_list(operand, op_at)
            else:
                texts = [_string(operand, op_at)]
            inner = _EqualsIgnoreCase(
                frozenset(text.casefold() for text in texts),
                tuple(_show(text) for text in texts),
            )
        elif name == "wildcard":
            inner = _compile_wildcard(operand, op_at)
        else:
            text = _string(operand, op_at)
            if not text:
                raise PatternError(op_at, f"expected a non-empty {name}, got {_show(text)}")
            inner = _Prefix(text, False) if name == "prefix" else _Suffix(text, False)
        return _AnythingButOf(inner)
    if isinstance(value, list | tuple):
        if not value:
            raise PatternError(at, "expected a non-empty array of strings or of numbers, got []")
        for index, item in enumerate(value):
            if not isinstance(item, str) and not _finite_number(item):
                raise PatternError(
                    f"{at}[{index}]", f"expected a string or a number, got {_kind(item)}"
                )
        kinds = {isinstance(item, str) for item in value}
        if len(kinds) > 1:
            raise PatternError(
                at, "expected only strings or only numbers, got a mix (EventBridge refuses it)"
            )
        items = list(value)
    elif isinstance(value, str) or _finite_number(value):
        items = [value]
    else:
        raise PatternError(
            at, f"expected a string, a number, an array of them or an object, got {_kind(value)}"
        )
    strings = frozenset(item for item in items if isinstance(item, str))
    numbers = frozenset(item for item in items if not isinstance(item, str))
    shown = _show(value) if not isinstance(value, tuple) else _show(list(value))
    return _AnythingBut(strings, numbers, shown)


def _string_list(value: Sequence[Any], at: str) -> list[str]:
    if not value:
        raise PatternError(at, "expected a non-empty array of strings, got []")
    return [_string(item, f"{at}[{index}]") for index, item in enumerate(value)]


def _compile_numeric(value: Any, at: str) -> _Numeric:
    example = 'like [">", 0, "<=", 5]'
    if not isinstance(value, list | tuple):
        raise PatternError(at, f"expected an array {example}, got {_kind(value)}")
    if len(value) not in (2, 4):
        raise PatternError(
            at,
            f"expected one comparison or a lower and an upper bound {example},"
            f" got {len(value)} item(s)",
        )
    pairs: list[tuple[str, int | float]] = []
    for index in range(0, len(value), 2):
        op, operand = value[index], value[index + 1]
        if not isinstance(op, str) or op not in _NUMERIC_OPS:
            raise PatternError(
                at,
                f"unknown numeric operator {_kind(op)} at position {index}"
                f" (expected one of: {', '.join(_NUMERIC_OPS)})",
            )
        if not _finite_number(operand):
            raise PatternError(at, f'expected a number after "{op}", got {_kind(operand)}')
        pairs.append((op, operand))
    text = " and ".join(f"{op} {_show(operand)}" for op, operand in pairs)
    if len(pairs) == 1:
        ((op, operand),) = pairs
        if op == "=":
            return _Numeric(operand, True, operand, True, text)
        if op in (">", ">="):
            return _Numeric(operand, op == ">=", None, False, text)
        return _Numeric(None, False, operand, op == "<=", text)
    (low_op, low), (high_op, high) = pairs
    if low_op not in (">", ">="):
        raise PatternError(at, f'a range starts with ">" or ">=", got "{low_op}"')
    if high_op not in ("<", "<="):
        raise PatternError(at, f'a range ends with "<" or "<=", got "{high_op}"')
    if low >= high:
        raise PatternError(
            at, f"the lower bound {_show(low)} must be less than the upper bound {_show(high)}"
        )
    return _Numeric(low, low_op == ">=", high, high_op == "<=", text)


# --- many patterns at once: the index -----------------------------------------------------
#
# Every pattern that can be indexed has a necessary condition, its key: "some leaf value at
# field path P is one of these strings / numbers / ..., or starts with one of these
# prefixes, or ..., or is present at all". Of a pattern's possible keys (one per leaf,
# nested ones included) the index takes the one that the fewest other patterns share (an
# exact value before a prefix or suffix, mere presence last), and keeps the keys in hash
# tables per field path: exact and case-folded values, and prefixes and suffixes by length.
# An event is looked up once per indexed field path; every key it satisfies makes its
# pattern a candidate, and only candidates (plus the few patterns without a key) are
# evaluated, minus the condition a key proves on its own. Keys are necessary conditions,
# so the result is the plain evaluator's by construction; what they buy is that an event
# meets a handful of candidates however many patterns there are (aws/event-ruler does the
# same with a state machine over the sorted field paths).

_PRESENT, _AFFIX, _EXACT = 1, 2, 3  # how selective a key is


@dataclass(slots=True, eq=False)
class _Key:
    """A necessary condition of a pattern: a leaf value at `path` accepted by one of these."""

    path: tuple[str, ...]
    strings: set[str] = field(default_factory=set)
    numbers: set[int | float] = field(default_factory=set)
    booleans: set[bool] = field(default_factory=set)
    null: bool = False
    folded: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    folded_prefixes: set[str] = field(default_factory=set)
    suffixes: set[str] = field(default_factory=set)
    folded_suffixes: set[str] = field(default_factory=set)
    present: bool = False
    #: a value that satisfies the key satisfies the leaf too (no approximation was made)
    proves: bool = True

    @property
    def score(self) -> int:
        if self.present:
            return _PRESENT
        if self.prefixes or self.folded_prefixes or self.suffixes or self.folded_suffixes:
            return _AFFIX
        return _EXACT


def _wildcard_segments(text: str) -> list[str]:
    """The literal runs of a (valid) wildcard between its unescaped stars."""
    segments: list[str] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            literal.append(text[index + 1])
            index += 2
            continue
        if char == "*":
            segments.append("".join(literal))
            literal = []
        else:
            literal.append(char)
        index += 1
    segments.append("".join(literal))
    return segments


def _leaf_key(path: tuple[str, ...], matchers: tuple[_Matcher, ...]) -> _Key | None:
    """The key of a leaf: what one of its alternatives needs; None for exists false."""
    key = _Key(path)
    for matcher in matchers:
        if isinstance(matcher, _Exact):
            key.strings |= matcher.strings
            key.numbers |= matcher.numbers
            key.booleans |= matcher.booleans
            key.null = key.null or matcher.null
        elif isinstance(matcher, _EqualsIgnoreCase):
            key.folded |= matcher.folded
        elif isinstance(matcher, _Prefix):
            (key.folded_prefixes if matcher.ignore_case else key.prefixes).add(matcher.prefix)
        elif isinstance(matcher, _Suffix):
            (key.folded_suffixes if matcher.ignore_case else key.suffixes).add(matcher.suffix)
        elif isinstance(matcher, _Wildcard):
            segments = _wildcard_segments(matcher.text)
            if len(segments) == 1:
                key.strings.add(segments[0])
            elif segments[0]:
                key.prefixes.add(segments[0])
                key.proves = key.proves and segments[1:] == [""]  # "abc*" is a prefix
            elif segments[-1]:
                key.suffixes.add(segments[-1])
                key.proves = key.proves and len(segments) == 2  # "*abc" is a suffix
            else:
                key.present = True
        elif isinstance(matcher, _Numeric) and matcher.low == matcher.high:
            key.numbers.add(matcher.low)  # type: ignore[arg-type]  # "=": both bounds set
        elif isinstance(matcher, _Exists) and not matcher.present:
            return None  # satisfied by an absent field: nothing to look up
        else:  # exists true, numeric ranges, cidr, anything-but: need some value there
            key.present = True
    if key.present:
        return _Key(path, present=True, proves=False)
    return key


def _keys_of(node: _Fields, path: tuple[str, ...]) -> list[_Key] | None:
    """Keys of which at least one holds whenever `node` matches (None: no such keys),
    from its most selective condition on its own (for the branches of an $or)."""
    best: list[_Key] | None = None
    best_rank = (0, 0)
    for condition in node.conditions:
        keys: list[_Key] | None
        if isinstance(condition, _Leaf):
            leaf = _leaf_key((*path, condition.key), condition.matchers)
            keys = None if leaf is None else [leaf]
        elif isinstance(condition, _Nested):
            keys = _keys_of(condition.node, (*path, condition.key))
        else:
            assert isinstance(condition, _Or)
            keys = []
            for branch in condition.branches:
                branch_keys = _keys_of(branch, path)
                if branch_keys is None:
                    keys = None
                    break
                keys.extend(branch_keys)
        if keys:
            rank = (min(key.score for key in keys), -len(keys))
            if rank > best_rank:
                best, best_rank = keys, rank
    return best


@dataclass(frozen=True, slots=True)
class _Option:
    """One way to index a pattern: keys of which one holds whenever the pattern matches."""

    keys: tuple[_Key, ...]
    #: the top-level condition they come from, if it is a leaf the keys prove (else -1)
    proven: int


def _options(root: _Fields) -> list[_Option]:
    """Every way to index `root`: one per condition (nested ones: one per inner condition)."""
    out: list[_Option] = []

    def walk(node: _Fields, path: tuple[str, ...], top: bool) -> None:
        for position, condition in enumerate(node.conditions):
            if isinstance(condition, _Leaf):
                key = _leaf_key((*path, condition.key), condition.matchers)
                if key is not None:
                    out.append(_Option((key,), position if top and key.proves else -1))
            elif isinstance(condition, _Nested):
                walk(condition.node, (*path, condition.key), False)
            else:
                keys = _keys_of(node=_Fields((condition,)), path=path)
                if keys:
                    out.append(_Option(tuple(keys), -1))

    walk(root, (), True)
    return out


def _items(key: _Key) -> list[tuple[Any, ...]]:
    """What a key looks up, each as one hashable item (to count how many patterns share it)."""
    if key.present:
        return [(key.path, "present")]
    return [
        *((key.path, "s", v) for v in key.strings),
        *((key.path, "n", v) for v in key.numbers),
        *((key.path, "b", v) for v in key.booleans),
        *([(key.path, "null")] if key.null else []),
        *((key.path, "f", v) for v in key.folded),
        *((key.path, "p", v) for v in key.prefixes),
        *((key.path, "fp", v) for v in key.folded_prefixes),
        *((key.path, "x", v) for v in key.suffixes),
        *((key.path, "fx", v) for v in key.folded_suffixes),
    ]


def _intern(node: Any, table: dict[Any, Any]) -> Any:
    """`node` with every sub-pattern shared with an equal one already in `table`.

    Routes often repeat conditions (``data.UserName`` anything-but ""): one object for
    each keeps the working set of a large index small enough for the CPU's caches.
    """
    make: Any
    if isinstance(node, _Fields):
        conditions = tuple(_intern(c, table) for c in node.conditions)
        key: tuple[Any, ...] = (_Fields, *map(id, conditions))
        make = lambda: _Fields(conditions)  # noqa: E731
    elif isinstance(node, _Leaf):
        matchers = tuple(_intern(m, table) for m in node.matchers)
        key = (_Leaf, node.key, node.where, *map(id, matchers))
        make = lambda: _Leaf(node.key, node.where, matchers)  # noqa: E731
    elif isinstance(node, _Nested):
        inner = _intern(node.node, table)
        key = (_Nested, node.key, node.where, id(inner))
        make = lambda: _Nested(node.key, node.where, inner)  # noqa: E731
    elif isinstance(node, _Or):
        branches = tuple(_intern(b, table) for b in node.branches)
        key = (_Or, *map(id, branches))
        make = lambda: _Or(branches)  # noqa: E731
    elif isinstance(node, _AnythingButOf):
        inner_matcher = _intern(node.inner, table)
        key = (_AnythingButOf, id(inner_matcher))
        make = lambda: _AnythingButOf(inner_matcher)  # noqa: E731
    else:  # a leaf matcher: frozen, its fields hashable
        key = (type(node), *(getattr(node, name) for name in node.__slots__))
        return table.setdefault(key, node)
    found = table.get(key)
    if found is None:
        found = table[key] = make()
    return found


_Hits = tuple[int, ...]


class _Lengths:
    """Strings of several lengths to find as prefixes (or suffixes) of a value."""

    __slots__ = ("lengths", "table")

    def __init__(self, table: dict[str, _Hits]) -> None:
        self.table = table
        self.lengths = tuple(sorted({len(text) for text in table}))


class _Tables:
    """The keys on one field path."""

    __slots__ = (
        "booleans",
        "folded",
        "folded_prefixes",
        "folded_suffixes",
        "null",
        "numbers",
        "prefixes",
        "present",
        "probe_string",
        "strings",
        "suffixes",
    )

    def __init__(self, keys: list[tuple[_Key, int]]) -> None:
        strings: dict[str, list[int]] = {}
        numbers: dict[int | float, list[int]] = {}
        booleans: dict[bool, list[int]] = {}
        folded: dict[str, list[int]] = {}
        prefixes: dict[str, list[int]] = {}
        folded_prefixes: dict[str, list[int]] = {}
        suffixes: dict[str, list[int]] = {}
        folded_suffixes: dict[str, list[int]] = {}
        null: list[int] = []
        present: list[int] = []
        for key, ident in keys:
            if key.present:
                present.append(ident)
                continue
            pairs: tuple[tuple[dict[Any, list[int]], set[Any]], ...] = (
                (strings, key.strings),
                (numbers, key.numbers),
                (booleans, key.booleans),
                (folded, key.folded),
                (prefixes, key.prefixes),
                (folded_prefixes, key.folded_prefixes),
                (suffixes, key.suffixes),
                (folded_suffixes, key.folded_suffixes),
            )
            for table, items in pairs:
                for item in items:
                    table.setdefault(item, []).append(ident)
            if key.null:
                null.append(ident)
        self.strings = _freeze(strings)
        self.numbers = _freeze(numbers)
        self.booleans = _freeze(booleans)
        self.folded = _freeze(folded)
        self.prefixes = _Lengths(_freeze(prefixes)) if prefixes else None
        self.folded_prefixes = _Lengths(_freeze(folded_prefixes)) if folded_prefixes else None
        self.suffixes = _Lengths(_freeze(suffixes)) if suffixes else None
        self.folded_suffixes = _Lengths(_freeze(folded_suffixes)) if folded_suffixes else None
        self.null = tuple(null)
        self.present = tuple(present)
        #: the string lookup, put together from only the tables this path has
        self.probe_string = _string_probe(
            self.strings,
            self.prefixes,
            self.suffixes,
            self.folded,
            self.folded_prefixes,
            self.folded_suffixes,
        )

    def probe(self, values: tuple[Any, ...], out: set[int]) -> None:
        """Add to `out` every key that one of `values` satisfies."""
        if self.present:
            out.update(self.present)
        for value in values:
            if isinstance(value, str):
                self.probe_string(value, out)
                continue
            if value is None:
                hit: _Hits | None = self.null
            elif isinstance(value, bool):
                hit = self.booleans.get(value)
            elif isinstance(value, int | float):
                hit = self.numbers.get(value)
            else:
                continue
            if hit:
                out.update(hit)


_StringProbe = Callable[[str, set[int]], None]


def _string_probe(
    strings: dict[str, _Hits],
    prefixes: _Lengths | None,
    suffixes: _Lengths | None,
    folded: dict[str, _Hits],
    folded_prefixes: _Lengths | None,
    folded_suffixes: _Lengths | None,
) -> _StringProbe:
    """One function that looks a string value up in every table this path has.

    It runs for every string value at every indexed path of every event: one call, with
    the tables bound as closure variables and the absent ones skipped by a test on a
    constant, is what keeps the cost of an indexed field low.
    """
    get = strings.get
    tables = (prefixes, suffixes, folded_prefixes, folded_suffixes)
    if not folded and tables == (None, None, None, None):

        def probe_exact(value: str, out: set[int]) -> None:
            hit = get(value)
            if hit:
                out.update(hit)

        return probe_exact if strings else _nothing
    affixed = tuple(
        (table.table.get, table.lengths, kind)
        for table, kind in (
            (prefixes, False),
            (suffixes, True),
        )
        if table is not None
    )
    folded_get = folded.get
    folded_affixed = tuple(
        (table.table.get, table.lengths, kind)
        for table, kind in ((folded_prefixes, False), (folded_suffixes, True))
        if table is not None
    )
    folding = bool(folded) or bool(folded_affixed)

    def probe(value: str, out: set[int]) -> None:
        hit = get(value)
        if hit:
            out.update(hit)
        if affixed:
            _probe_affixes(affixed, value, out)
        if folding:
            lowered = value.casefold()
            hit = folded_get(lowered)
            if hit:
                out.update(hit)
            if folded_affixed:
                _probe_affixes(folded_affixed, lowered, out)

    return probe


def _probe_affixes(
    tables: tuple[tuple[Callable[[str], _Hits | None], tuple[int, ...], bool], ...],
    value: str,
    out: set[int],
) -> None:
    """Look up each prefix (or suffix) of `value` whose length some key has."""
    size = len(value)
    for get, lengths, from_end in tables:
        for length in lengths:
            if length > size:
                break
            hit = get(value[size - length :] if from_end else value[:length])
            if hit:
                out.update(hit)


def _nothing(value: str, out: set[int]) -> None:
    """A path whose keys only ask for a value to be present."""


def _freeze(table: dict[Any, list[int]]) -> dict[Any, _Hits]:
    return {item: tuple(idents) for item, idents in table.items()}


def _values_at(event: Mapping[str, Any], parents: tuple[str, ...], last: str) -> list[Any]:
    """Every leaf value at a field path, through arrays of objects (the general case)."""
    objects: list[Any] = [event]
    for name in parents:
        below: list[Any] = []
        for obj in objects:
            value = obj.get(name)
            if isinstance(value, Mapping):
                below.append(value)
            elif isinstance(value, list | tuple):
                _flatten(value, below, objects=True)
        if not below:
            return []
        objects = below
    values: list[Any] = []
    for obj in objects:
        values.extend(_leaf_values(obj.get(last, _MISSING)))
    return values


class PatternIndex(Generic[T]):
    """Many patterns compiled into one index: which of them match an event.

    Built from ``(value, pattern)`` pairs (a None pattern matches every event);
    :meth:`matching` returns the values whose pattern matches, in the order given, with
    the same result as calling :meth:`Pattern.matches` on each, at a cost that depends on
    the event and on the few candidate patterns it meets, not on how many there are.
    """

    __slots__ = ("_always", "_paths", "_residues", "_values", "indexed")

    def __init__(self, entries: Iterable[tuple[T, Pattern | None]]) -> None:
        self._values: list[T] = []
        #: what is left to check once a pattern is a candidate (None: nothing, it matches)
        self._residues: list[_Fields | None] = []
        always: list[int] = []
        by_path: dict[tuple[str, ...], list[tuple[_Key, int]]] = {}
        shared: dict[Any, Any] = {}
        roots: list[_Fields | None] = []
        options: list[list[_Option]] = []
        sharing: dict[tuple[Any, ...], int] = {}  # how many patterns could look each item up
        for value, pattern in entries:
            self._values.append(value)
            root = None if pattern is None else _intern(pattern._root, shared)
            roots.append(root)
            options.append([] if root is None else _options(root))
            for item in {item for o in options[-1] for key in o.keys for item in _items(key)}:
                sharing[item] = sharing.get(item, 0) + 1
        everyone = len(roots) + 1

        def cost(option: _Option) -> tuple[float, int]:
            # the candidates a hit brings: a value many patterns share, or mere presence,
            # costs more; an affix a little more than an exact value
            total = 0.0
            for key in option.keys:
                if key.present:
                    total += everyone
                    continue
                for item in _items(key):
                    total += sharing[item] + (0.5 if item[1] in ("p", "fp", "x", "fx") else 0)
            return total, len(option.keys)

        for ident, (root, choices) in enumerate(zip(roots, options, strict=True)):
            if root is None or not choices:
                self._residues.append(root)
                always.append(ident)
                continue
            best = min(choices, key=cost)
            residue: _Fields | None = root
            if best.proven >= 0:
                # a top-level leaf whose key is exact: a hit is that condition satisfied
                rest = root.conditions[: best.proven] + root.conditions[best.proven + 1 :]
                residue = _intern(_Fields(rest), shared) if rest else None
            self._residues.append(residue)
            for key in best.keys:
                by_path.setdefault(key.path, []).append((key, ident))
        #: per indexed field path: parent field names, last field name, its keys, and the
        #: lookup of a string value there (called inline: it runs for every event)
        self._paths = tuple(
            (path[:-1], path[-1], tables, tables.present, tables.probe_string)
            for path, keys in sorted(by_path.items())
            for tables in (_Tables(keys),)
        )
        self._always = tuple(always)
        #: how many patterns are looked up by a key (the others are tried on every event)
        self.indexed = len(self._values) - len(always)

    def __len__(self) -> int:
        return len(self._values)

    def _probe(self, event: Mapping[str, Any]) -> set[int]:
        out: set[int] = set(self._always) if self._always else set()
        for parents, last, tables, present, probe_string in self._paths:
            obj: Any = event
            for name in parents:  # the common case: objects all the way down
                obj = obj.get(name)
                if type(obj) is not dict:
                    break
            else:
                raw = obj.get(last, _MISSING)
                if type(raw) is str:
                    if present:
                        out.update(present)
                    probe_string(raw, out)
                    continue
                values = _leaf_values(raw)
                if values:
                    tables.probe(values, out)
                continue
            if isinstance(obj, Mapping | list | tuple):  # an array on the way: every element
                found = _values_at(event, parents, last)
                if found:
                    tables.probe(tuple(found), out)
        return out

    def candidates(self, event: Mapping[str, Any]) -> list[int]:
        """Positions of the patterns worth evaluating for `event` (a superset of matches)."""
        return sorted(self._probe(event))

    def matching(self, event: Mapping[str, Any]) -> list[T]:
        """The values whose pattern matches `event`, in the order they were given."""
        found = self._probe(event)
        residues, values = self._residues, self._values
        if len(found) > 1:
            return [
                values[i] for i in sorted(found) if (r := residues[i]) is None or r.matches(event)
            ]
        return [values[i] for i in found if (r := residues[i]) is None or r.matches(event)]
