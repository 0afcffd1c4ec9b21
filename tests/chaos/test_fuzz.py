"""Fuzzing the two parsers that take users' text: the config loader and the pattern
compiler. Whatever they are given, they answer with a result or their own error
(ConfigError, PatternError) naming what is wrong, never with another exception; a
compiled pattern matches any event without raising."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vebus import config as config_module
from vebus.config import Config, load_config, parse_config
from vebus.errors import ConfigError, PatternError
from vebus.events.patterns import OPERATORS, Pattern, compile_pattern

LONG = os.environ.get("VEBUS_CHAOS_LONG") == "1"
EXAMPLES = 3000 if LONG else 300
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800 if LONG else 300)]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _vocabulary() -> list[str]:
    """Every field name and sink/auth tag the config structs know."""
    names: set[str] = set()
    for obj in vars(config_module).values():
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
            names.update(f.encode_name for f in msgspec.structs.fields(obj))
            tag = obj.__struct_config__.tag
            if isinstance(tag, str):
                names.add(tag)
    return sorted(names)


WORDS = _vocabulary()
ENV = {"SET": "value", "URL": "http://127.0.0.1:1/x", "EMPTY": ""}

texts = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(
        [
            "",
            "10s",
            "500ms",
            "5m",
            "1h",
            "7d",
            "-1s",
            "1e309",
            "http://127.0.0.1:8080/x",
            "https://vc01.example.com/sdk",
            "nats://127.0.0.1:4222",
            "${SET}",
            "${UNSET}",
            "${UNSET:-dflt}",
            "${",
            "${SET",
            "{{ data.Vm.Name }}",
            "{{ broken",
            "{% for %}",
            "{{ ''.__class__.__mro__ }}",
            "vebus.x",
            "a.b.*",
            "127.0.0.1:0",
            "0.0.0.0:99999",
            "\x00",
            "ü",
            "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        ]
    ),
    st.text(max_size=30),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.integers(-2, 2), st.none())
yamlish = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=40,
)


def _struct_like(names: list[str]) -> st.SearchStrategy[dict[Any, Any]]:
    return st.dictionaries(st.sampled_from(names), yamlish, max_size=8)


TAGS = sorted(
    t
    for obj in vars(config_module).values()
    if isinstance(obj, type) and issubclass(obj, msgspec.Struct)
    and isinstance(t := obj.__struct_config__.tag, str)
)  # fmt: skip
sink_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(TAGS), "url": st.sampled_from(["http://127.0.0.1:1/x", "${URL}"])},
    # every third word, but not the two required ones (which third words are depends on
    # the vocabulary: a new field anywhere shifts it)
    optional={w: yamlish for w in WORDS[::3] if w not in ("kind", "url")},
)
route_like = st.fixed_dictionaries(
    {
        "name": st.one_of(texts, st.sampled_from(["r1", "r-2", "_x"])),
        "sink": st.one_of(yamlish, _struct_like(WORDS), sink_like),
    },
    optional={"match": yamlish, "delivery": st.one_of(yamlish, _struct_like(WORDS))},
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "nats": st.one_of(yamlish, _struct_like(WORDS)),
        "streams": st.one_of(yamlish, _struct_like(WORDS)),
        "vcenters": st.one_of(yamlish, st.lists(_struct_like(WORDS), max_size=3)),
        "routes": st.one_of(yamlish, st.lists(route_like, max_size=3)),
        "webhook": st.one_of(yamlish, _struct_like(WORDS)),
        "deadletter": st.one_of(yamlish, _struct_like(WORDS)),
        "console": st.one_of(yamlish, _struct_like(WORDS)),
    },
)


@FUZZ
@given(raw=st.one_of(yamlish, config_like))
def test_parse_config_answers_a_config_or_a_config_error(raw: Any) -> None:
    result: Config | list[str]
    try:
        result = parse_config(raw, ENV)
    except ConfigError as e:
        result = e.errors
    if not isinstance(result, Config):  # one line per problem, each saying something
        assert result
        assert all(isinstance(line, str) for line in result)
        assert all(line for line in result)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 50))
@given(text=st.text(max_size=200))
def test_load_config_on_any_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    result: Config | list[str]
    try:
        result = load_config(path, ENV)
    except ConfigError as e:
        result = e.errors
    assert isinstance(result, Config) or result


def test_load_config_on_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("routes: []  # Gr\xfc\xdfe\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, ENV)


operators = st.sampled_from([*OPERATORS, "$or", "anything-but", "numeric", "cidr", "nope"])
numeric_ops = st.lists(
    st.one_of(st.sampled_from(["=", ">", ">=", "<", "<=", "!"]),
              st.floats(allow_nan=True), st.integers(), texts),
    max_size=5,
)  # fmt: skip
strings = st.one_of(st.text(max_size=8), st.sampled_from(["", "a*b", "*", "**", "vm-1", "x\\*"]))
numbers = st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=True, allow_infinity=True))
well_formed = st.one_of(
    st.builds(lambda v: {"prefix": v}, strings),
    st.builds(lambda v: {"suffix": v}, strings),
    st.builds(lambda v: {"wildcard": v}, strings),
    st.builds(lambda v: {"equals-ignore-case": v}, strings),
    st.builds(lambda v: {"exists": v}, st.booleans()),
    st.builds(lambda v: {"cidr": v}, st.sampled_from(
        ["10.0.0.0/8", "10.0.0.1/33", "::1/128", "2001:db8::/32", "x/1", "1.2.3.4"])),
    st.builds(lambda v: {"anything-but": v}, st.one_of(
        strings, numbers, st.lists(st.one_of(strings, numbers), max_size=3),
        st.builds(lambda w: {"prefix": w}, strings), st.builds(lambda w: {"wildcard": w}, strings),
    )),
    st.builds(lambda a, b, c, d: {"numeric": [a, b, c, d][: 2 if c == "stop" else 4]},
              st.sampled_from(["=", ">", ">=", "<", "<="]), numbers,
              st.sampled_from(["<", "<=", ">", "stop"]), numbers),
)  # fmt: skip
leaf_alternative = st.one_of(
    scalars,
    well_formed,
    well_formed,
    st.dictionaries(operators, st.one_of(scalars, numeric_ops, yamlish), min_size=1, max_size=2),
)
pattern_like: st.SearchStrategy[Any] = st.deferred(
    lambda: st.dictionaries(
        st.one_of(st.sampled_from(["type", "source", "id", "data", "Key", "Vm", "$or"]), keys),
        st.one_of(
            st.lists(leaf_alternative, min_size=1, max_size=4),
            st.lists(leaf_alternative, min_size=1, max_size=4),
            pattern_like,
            st.lists(pattern_like, max_size=3),
        ),
        min_size=1,
        max_size=3,
    )
)
events = st.dictionaries(
    st.sampled_from(["type", "source", "id", "data", "Key", "Vm"]),
    yamlish,
    max_size=5,
)


@FUZZ
@given(pattern=st.one_of(pattern_like, yamlish), event=events)
def test_compile_pattern_answers_a_pattern_or_a_pattern_error(pattern: Any, event: Any) -> None:
    compiled: Pattern | str
    try:
        compiled = compile_pattern(pattern)
    except PatternError as e:
        compiled = str(e)
    if isinstance(compiled, str):
        assert compiled, "a PatternError says what is wrong"
    else:
        assert compiled.matches(event) in (True, False)


def test_the_vocabulary_reaches_the_config() -> None:
    """The fuzzer's words are the config's own (a renamed field must not blind it)."""
    assert {"routes", "sink", "delivery", "max_attempts", "webhook", "url"} <= set(WORDS)
    assert not math.isnan(EXAMPLES)
