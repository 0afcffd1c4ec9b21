"""Secrets out before anything reaches a page: a route as the console shows and edits it.

A route's sink may hold secrets written into the file (a Slack webhook URL is one, so is a
bearer token, a PagerDuty routing key, an SMTP password) or `${ENV}` references to them.
References are names, not secrets, and are shown as written. Every other value that is or
may be a secret becomes REDACTED:

- a field whose name says secret (`password`, `token`, `secret`, `routing_key`,
  `access_key_id`, `secret_access_key`, ...), and every header value;
- a URL's user and password, and its query string; the whole path of a chat webhook URL
  (Slack, Teams: the path is the credential).

The route editor shows the redacted form; when an operator applies it, each REDACTED left
in place is given back its stored value from the same route and field (`restore`), so
secrets never travel to the browser and back. A REDACTED with no stored value to stand
for (a new route, a renamed field) is refused, naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vebus.config import env_references, is_unresolved

__all__ = ["REDACTED", "redact_route", "restore"]

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|routing_key|api_?key|access_key|credential|signature|private)",
    re.I,
)
#: sinks whose URL path is their credential (an incoming-webhook URL)
_PATH_IS_SECRET = frozenset({"slack", "teams"})


def _redact_url(url: str, *, whole_path: bool) -> str:
    if is_unresolved(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return url if not whole_path else REDACTED
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"{REDACTED}@{host}"
    path = f"/{REDACTED}" if whole_path and parts.path not in ("", "/") else parts.path
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, host, path, query, ""))


def _redact(value: Any, key: str, kind: str) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _redact(v, str(k), kind) if str(key).lower() != "headers" else _header(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, key, kind) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_KEY.search(key):
        return value if _only_references(value) else REDACTED
    if key in ("url", "endpoint_url"):
        return _redact_url(value, whole_path=kind in _PATH_IS_SECRET)
    return value


def _header(value: Any) -> Any:
    if isinstance(value, str) and _only_references(value):
        return value
    return REDACTED


def _only_references(value: str) -> bool:
    """True when every character of `value` that is not white space is in a ${...}."""
    rest = value
    for name, default in env_references(value):
        rest = rest.replace(f"${{{name}}}" if default is None else f"${{{name}:-{default}}}", "")
    return is_unresolved(value) and not rest.strip()


def redact_route(raw: Any) -> Any:
    """A written route (a mapping, as stored) with its secrets replaced by REDACTED."""
    if not isinstance(raw, Mapping):
        return raw
    sink = raw.get("sink")
    kind = str(sink.get("kind", "")) if isinstance(sink, Mapping) else ""
    out = dict(raw)
    if isinstance(sink, Mapping):
        out["sink"] = _redact(sink, "sink", kind)
    return out


def restore(new: list[Any], old: list[Any]) -> tuple[list[Any], list[str]]:
    """`new` routes with each REDACTED put back from the route of the same name in `old`
    (where that field was redacted from), and the fields that had nothing to restore."""
    by_name = {r.get("name"): r for r in old if isinstance(r, Mapping)}
    problems: list[str] = []

    def walk(value: Any, stored: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            st = stored if isinstance(stored, Mapping) else {}
            return {k: walk(v, st.get(k), f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            items = stored if isinstance(stored, list) else []
            return [
                walk(v, items[i] if i < len(items) else None, f"{path}[{i}]")
                for i, v in enumerate(value)
            ]
        if isinstance(value, str) and REDACTED in value:
            if isinstance(stored, str):
                if value == REDACTED:
                    return stored
                if (
                    _redact_url(stored, whole_path=True) == value
                    or _redact_url(stored, whole_path=False) == value
                ):
                    return stored
            problems.append(
                f"{path}: {REDACTED} stands for a stored secret, but the stored route has "
                "none there: write the value (or a ${VARIABLE}) instead"
            )
        return value

    out = []
    for i, route in enumerate(new):
        name = route.get("name") if isinstance(route, Mapping) else None
        out.append(walk(route, by_name.get(name), f"routes[{i}]"))
    return out, problems
