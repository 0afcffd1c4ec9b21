"""Typed vebus configuration: one YAML file decoded into frozen msgspec structs.

Strings may hold `${NAME}` (or `${NAME:-default}`) references to environment variables;
they are resolved by the process that loads the file, never written back or logged.
Every problem is reported as one line that names its path (`routes[2].sink.url`) and
what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from vebus.errors import ConfigError
from vebus.subjects import RESERVED_SOURCES, token

__all__ = [
    "Backoff",
    "Config",
    "ConsoleSink",
    "Delivery",
    "Duration",
    "NatsConfig",
    "Route",
    "Sink",
    "StreamsConfig",
    "VCenterConfig",
    "WebhookSink",
    "load_config",
    "parse_config",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class Duration(float):
    """Seconds, written in the file as a number or `500ms`, `10s`, `5m`, `1h`, `7d`."""


def parse_duration(value: object) -> Duration:
    """A Duration from a number of seconds or a string such as `1h`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s or 5m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a duration >= 0, got {value!r}")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"expected a duration like 10s or 5m, got {value!r}")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"unsupported type {typ!r}")


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r} may use only letters, digits, '_' and '-' "
            f"(it becomes a NATS subject token)"
        )


def _check_http_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field}: expected an http(s) URL, got {url!r}")


class NatsConfig(_Base, frozen=True):
    """How to reach NATS."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    #: JetStream stream replicas (1 embedded, 3 on a cluster)
    replicas: int = 1
    connect_timeout: Duration = Duration(5)


class StreamsConfig(_Base, frozen=True):
    """Retention of the three streams."""

    events_max_age: Duration = Duration(7 * 86400)
    events_max_bytes: int = -1
    #: per route: a backed-up route cannot fill VEBUS_ROUTES for the others
    route_max_msgs: int = 1_000_000
    dlq_max_age: Duration = Duration(30 * 86400)
    duplicate_window: Duration = Duration(120)


class VCenterConfig(_Base, frozen=True):
    """One vCenter Server (or simulator) to follow."""

    name: str
    url: str
    username: str
    password: str
    #: skip TLS certificate verification (lab vCenters with self-signed certificates)
    insecure: bool = False
    #: events per EventHistoryCollector page while tailing
    page_size: int = 100
    #: where a collector with no checkpoint starts: new events only, or all history vCenter has
    start: Literal["latest", "earliest"] = "latest"
    #: how often the checkpoint is written (it is also written on shutdown)
    checkpoint_interval: Duration = Duration(1)

    def __post_init__(self) -> None:
        _check_name("vcenter", self.name)
        if self.name in RESERVED_SOURCES:
            raise ValueError(f"vcenter name {self.name!r} is reserved for another event source")
        _check_http_url("url", self.url)
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"page_size: expected 1 to 1000, got {self.page_size}")


class Backoff(_Base, frozen=True):
    """Exponential backoff between delivery attempts, with jitter."""

    initial: Duration = Duration(1)
    max: Duration = Duration(300)
    multiplier: float = 2.0
    #: each delay is drawn from [d * (1 - jitter), d]
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier: expected >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter: expected 0 to 1, got {self.jitter}")


class Delivery(_Base, frozen=True):
    """How hard the dispatcher tries before an event becomes a dead letter."""

    max_attempts: int = 10
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    #: per attempt
    timeout: Duration = Duration(10)
    #: events of this route being delivered at once, per dispatcher replica
    max_in_flight: int = 16

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected >= 1, got {self.max_attempts}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected >= 1, got {self.max_in_flight}")
        if self.timeout <= 0:
            raise ValueError("timeout: expected a duration > 0")


class WebhookSink(_Base, frozen=True, tag_field="kind", tag="webhook"):
    """CloudEvents over HTTP POST (a VEBA function, a Knative service, any webhook)."""

    url: str
    #: binary: attributes in ce- headers; structured: the whole event as JSON
    mode: Literal["binary", "structured"] = "binary"
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)


class ConsoleSink(_Base, frozen=True, tag_field="kind", tag="console"):
    """One line per event on the dispatcher's standard output (at-most-once)."""

    format: Literal["line", "json"] = "line"


Sink = WebhookSink | ConsoleSink


class Route(_Base, frozen=True):
    """Events that match `match` are delivered to `sink` under the `delivery` policy."""

    name: str
    sink: Sink
    match: dict[str, Any] = msgspec.field(default_factory=dict)
    delivery: Delivery = msgspec.field(default_factory=Delivery)

    def __post_init__(self) -> None:
        _check_name("route", self.name)
        if self.name.startswith("_"):
            raise ValueError(f"route name {self.name!r} may not start with '_' (reserved)")
        if self.match:
            from vebus.patterns import PatternError, compile_pattern

            try:
                compile_pattern(self.match, path="match")
            except PatternError as e:
                raise ValueError(str(e)) from None


class Config(_Base, frozen=True):
    """The whole vebus.yaml."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    streams: StreamsConfig = msgspec.field(default_factory=StreamsConfig)
    vcenters: list[VCenterConfig] = msgspec.field(default_factory=list)
    routes: list[Route] = msgspec.field(default_factory=list)

    def route(self, name: str) -> Route:
        """The route called `name` (KeyError if there is none)."""
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


# ---------------------------------------------------------------------------- loading


def _resolve_env(value: Any, path: str, env: Mapping[str, str], errors: list[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(
                f"{path}: environment variable {name} is not set "
                f"(referenced as ${{{name}}}; set it, or give a default: ${{{name}:-value}})"
            )
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve_env(v, _join(path, str(k)), env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]", env, errors) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_EXPECTED = re.compile(r"Expected `(?P<exp>[^`]+)`, got `(?P<got>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")


def _describe(err: msgspec.ValidationError, prefix: str) -> tuple[str, str | None]:
    """One readable line for a msgspec error, and the unknown key if that was the problem."""
    m = _AT.match(str(err))
    assert m is not None
    msg, sub = m.group("msg"), (m.group("path") or "").lstrip(".")
    path = prefix + ("." + sub if sub and not sub.startswith("[") else sub)
    if u := _UNKNOWN.match(msg):
        field = u.group("field")
        return f"{_join(path, field)}: unknown key {field!r} (check the spelling)", field
    if e := _EXPECTED.match(msg):
        exp = e.group("exp").replace("array", "a list").replace("object", "a mapping")
        return f"{path}: expected {exp}, got {e.group('got')}", None
    if mm := _MISSING.match(msg):
        return f"{_join(path, mm.group('field'))}: required key is missing", None
    if msg.startswith("Invalid value") and path.endswith(".kind"):
        kinds = ", ".join(t.__struct_config__.tag for t in _SINKS)  # type: ignore[misc]
        return f"{path}: {msg[0].lower()}{msg[1:]} (expected one of: {kinds})", None
    if f := _FIELD_MSG.match(msg):
        return f"{_join(path, f.group('field'))}: {f.group('rest')}", None
    return f"{path}: {msg}", None


_FIELD_MSG = re.compile(r"^(?P<field>[a-z_]+): (?P<rest>.*)$", re.S)
_SINKS: tuple[type[msgspec.Struct], ...] = (WebhookSink, ConsoleSink)


def _struct_types(typ: Any) -> list[type[msgspec.Struct]]:
    """The Struct types a field annotation may hold (one, or the members of a union)."""
    args = getattr(typ, "__args__", None)
    if args and not (isinstance(typ, type) and issubclass(typ, msgspec.Struct)):
        return [a for a in args if isinstance(a, type) and issubclass(a, msgspec.Struct)]
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        return [typ]
    return []


def _drop_unknown(raw: Any, typ: Any, path: str, errors: list[str]) -> Any:
    """A copy of `raw` without keys `typ` does not know, each reported; recurses into structs."""
    if not isinstance(raw, dict):
        return raw
    candidates = _struct_types(typ)
    if not candidates:
        return raw
    struct = candidates[0]
    if len(candidates) > 1:  # a tagged union: pick the member by its tag
        tags = {t.__struct_config__.tag: t for t in candidates}
        struct = tags.get(raw.get("kind"), struct)
        if raw.get("kind") not in tags:
            return raw  # the tag error itself is reported by the decoder
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    tag_field = struct.__struct_config__.tag_field
    out: dict[str, Any] = {}
    for key, value in raw.items():
        sub = _join(path, str(key))
        if key == tag_field:
            out[key] = value
        elif key not in fields:
            errors.append(
                f"{sub}: unknown key {key!r} (expected one of: {', '.join(sorted(fields))})"
            )
        elif isinstance(value, list) and (item := getattr(fields[key], "__args__", None)):
            out[key] = [
                _drop_unknown(v, item[0], f"{sub}[{i}]", errors) for i, v in enumerate(value)
            ]
        else:
            out[key] = _drop_unknown(value, fields[key], sub, errors)
    return out


def _convert(raw: Any, typ: type[Any], path: str, errors: list[str]) -> Any:
    """Decode `raw` into `typ`, reporting every unknown key and then the first other error."""
    before = len(errors)
    raw = _drop_unknown(raw, typ, path, errors)
    try:
        value = msgspec.convert(raw, typ, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        errors.append(_describe(e, path)[0])
        return None
    return value if len(errors) == before else None


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """A Config from already-parsed YAML; raises ConfigError listing every problem found."""
    env = os.environ if env is None else env
    errors: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(raw).__name__}"])
    raw = _resolve_env(raw, "", env, errors)
    fields = {f.name: f for f in msgspec.structs.fields(Config)}
    parts: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            errors.append(
                f"{key}: unknown key {key!r} (expected one of: {', '.join(sorted(fields))})"
            )
            continue
        if key in ("vcenters", "routes"):
            item_type = VCenterConfig if key == "vcenters" else Route
            if value is None:
                value = []
            if not isinstance(value, list):
                errors.append(f"{key}: expected a list, got {type(value).__name__}")
                continue
            items = [_convert(v, item_type, f"{key}[{i}]", errors) for i, v in enumerate(value)]
            parts[key] = items
        else:
            parts[key] = _convert({} if value is None else value, fields[key].type, key, errors)
    for key in ("vcenters", "routes"):
        seen: set[str] = set()
        for i, item in enumerate(parts.get(key) or []):
            if item is None:
                continue
            if token(item.name) in seen:
                errors.append(f"{key}[{i}].name: {item.name!r} is used twice")
            seen.add(token(item.name))
    if errors:
        raise ConfigError(errors)
    return Config(**{k: v for k, v in parts.items() if v is not None})


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a vebus.yaml; raises ConfigError with one line per problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read the config file: {e.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{p}: not valid YAML{where}: {problem}"]) from None
    return parse_config(raw, env)
