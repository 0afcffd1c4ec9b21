"""`vebus routes test`: does a route's pattern match an event, and which field decided it."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from vebus.cli._common import config_option, fail
from vebus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError
from vebus.patterns import Pattern, PatternError, compile_pattern

__all__ = ["load_structured_event", "routes"]

#: exit statuses of `vebus routes test`
MATCHED, NOT_MATCHED, INVALID = 0, 1, 2

_REQUIRED = ("specversion", "id", "source", "type")
_KNOWN = ("time", "subject", "dataschema", "datacontenttype")


@click.group()
def routes() -> None:
    """Work with routes: try a pattern against an event before deploying it."""


def _read(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"{file}: cannot read the event file: {e.strerror}", INVALID)


def _attribute(name: str, value: Any, where: str) -> str:
    """An attribute as the NATS binding carries it: a string (true/false, numbers as text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidEventError(f"{where}: attribute {name!r} must be a string, number or boolean")


def load_structured_event(text: str, where: str) -> CloudEvent:
    """A CloudEvent from its JSON (structured) form; InvalidEventError says what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidEventError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidEventError(
            f"{where}: expected a CloudEvent as a JSON object, got {type(doc).__name__}"
        )
    missing = [name for name in _REQUIRED if not doc.get(name)]
    if missing:
        raise InvalidEventError(
            f"{where}: not a structured CloudEvent: missing {', '.join(missing)}"
            " (expected an object with specversion, id, source, type and data)"
        )
    attrs = {
        name: _attribute(name, value, where)
        for name, value in doc.items()
        if name not in ("data", "data_base64") and value is not None
    }
    if attrs["specversion"] != "1.0":
        raise InvalidEventError(f"{where}: unsupported specversion {attrs['specversion']!r}")
    content_type = attrs.get("datacontenttype")
    if "data_base64" in doc:
        try:
            body = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEventError(f"{where}: data_base64 is not valid base64") from None
    elif "data" not in doc or doc["data"] is None:
        body = b""
    elif isinstance(doc["data"], str) and content_type and "json" not in content_type.lower():
        body = doc["data"].encode()
    else:
        body = json.dumps(doc["data"]).encode()
    return CloudEvent(
        id=attrs.pop("id"),
        source=attrs.pop("source"),
        type=attrs.pop("type"),
        specversion=attrs.pop("specversion"),
        datacontenttype=attrs.pop("datacontenttype", "application/json"),
        **{name: attrs.pop(name) for name in _KNOWN if name in attrs},
        extensions={name.lower(): value for name, value in attrs.items()},
        data=body,
    )


def _route_pattern(config_path: str, name: str) -> tuple[str, Pattern | None]:
    """The pattern of route `name` in the config file (None: the route takes every event).

    Only that route's `match` is read (and its ${ENV} references resolved): testing a
    pattern does not need the sinks' secrets. `vebus config check` validates the rest.
    """
    from vebus.config import _resolve_env  # the loader's own ${ENV} rules, for `match` only

    try:
        raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except OSError as e:
        fail(f"{config_path}: cannot read the config file: {e.strerror}", INVALID)
    except yaml.YAMLError as e:
        fail(f"{config_path}: not valid YAML: {e}", INVALID)
    entries = raw.get("routes") if isinstance(raw, dict) else None
    names: list[str] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        names.append(str(entry.get("name")))
        if entry.get("name") != name:
            continue
        path = f"routes[{index}].match"
        errors: list[str] = []
        match = _resolve_env(entry.get("match") or {}, path, os.environ, errors)
        if errors:
            fail(f"{config_path}: {errors[0]}", INVALID)
        if not match:
            return path, None
        try:
            return path, compile_pattern(match, path=path)
        except PatternError as e:
            fail(f"{config_path}: {e}", INVALID)
    known = ", ".join(names) or "none"
    fail(f"{config_path}: no route named {name!r} (routes: {known})", INVALID)


@routes.command("test")
@click.option("--route", "route_name", help="A route of the config file, by name.")
@click.option("--pattern", "pattern_json", help="A pattern as JSON, instead of --route.")
@click.option(
    "--event",
    "event_file",
    required=True,
    help="A structured CloudEvent (JSON) file, or - for standard input.",
)
@config_option
def test(
    route_name: str | None, pattern_json: str | None, event_file: str, config_path: str
) -> None:
    """Match one event against a route's pattern (or --pattern) and say why.

    Prints "matched" or "no match" and the field that decided it, as the filter would
    decide. Exit status: 0 matched, 1 no match, 2 invalid pattern, event or route.

    \b
    Examples:
      vebus routes test --route vm-off-to-slack --event event.json
      vebus routes test --pattern '{"type": [{"prefix": "com.vmware.vsphere.Vm"}]}' --event -
    """
    if (route_name is None) == (pattern_json is None):
        raise click.UsageError("give exactly one of --route NAME or --pattern JSON")
    label: str
    pattern: Pattern | None
    if pattern_json is not None:
        try:
            raw = json.loads(pattern_json)
        except json.JSONDecodeError as e:
            fail(f"--pattern: not valid JSON: {e}", INVALID)
        try:
            pattern = compile_pattern(raw, path="pattern")
        except PatternError as e:
            fail(f"--pattern: {e}", INVALID)
        label = "pattern"
    else:
        assert route_name is not None
        _, pattern = _route_pattern(config_path, route_name)
        label = f"route {route_name}"
    where = "stdin" if event_file == "-" else event_file
    try:
        event = load_structured_event(_read(event_file), where)
        doc = event.as_match_input()
    except InvalidEventError as e:
        fail(str(e), INVALID)
    if pattern is None:
        click.echo(f"matched: {label} has no match, so it takes every event")
        sys.exit(MATCHED)
    explanation = pattern.explain(doc)
    if explanation.matched:
        click.echo(f"matched: {label}")
        click.echo(f"  {explanation.reason}")
        sys.exit(MATCHED)
    click.echo(f"no match: {label}")
    click.echo(f"  {explanation.reason}")
    sys.exit(NOT_MATCHED)
