"""Sink text fields as Jinja2 templates, rendered in a sandbox against one CloudEvent.

A template is compiled (and its syntax checked) when the config is loaded, then rendered
once per event. The context a template sees:

- ``data``: the event's payload, decoded from JSON (the text itself for a non-JSON
  ``datacontenttype``, None for an empty body);
- every CloudEvent attribute by its name: ``id``, ``type``, ``source``, ``specversion``,
  ``time``, ``subject``, ``datacontenttype``, and extensions such as ``eventclass``;
- ``event``: the same attributes as one dict (``event.type``, ``event["eventclass"]``).

A value that is not there renders as empty (``{{ data.Vm.Name }}`` on an event without
``Vm`` gives ""), unless the template is strict: then rendering fails with a TemplateError
naming the missing name. ``| tojson`` writes any value as JSON (a missing one as null, or
an error when strict), for JSON bodies: autoescaping is off. Templates run in Jinja2's
immutable sandbox: no attributes starting with ``_``, no methods that modify data, no
huge ``*``/``**`` results; any such attempt, and any other failure while rendering, is a
TemplateError (a permanent failure: the event becomes a dead letter, it is not retried).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vebus.bus.cloudevent import CloudEvent
from vebus.errors import InvalidEventError, TemplateError

__all__ = ["Template", "compile_template"]

#: the longest string or list a template may build with ``*``, and bits an ``**`` may make
MAX_REPEAT = 1_000_000
MAX_POWER_BITS = 4096


def _refuse(message: str) -> Any:
    raise SecurityError(message)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing loudly on unsafe access and on runaway arithmetic."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        return _refuse(  # type: ignore[no-any-return]
            f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed"
        )

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and left.bit_length() * right > MAX_POWER_BITS
            ):
                _refuse(f"{left} ** {right} is too large")
            return operator.pow(left, right)
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(count, int)
                and len(seq) * count > MAX_REPEAT
            ):
                _refuse(f"repeating a {type(seq).__name__} {count} times is too large")
        return operator.mul(left, right)


def _make_env(strict: bool) -> _Sandbox:
    undefined: type[jinja2.Undefined] = (
        jinja2.StrictUndefined if strict else jinja2.ChainableUndefined
    )
    env = _Sandbox(autoescape=False, undefined=undefined, keep_trailing_newline=True)

    def to_json(value: Any, indent: int | None = None) -> str:
        def default(item: Any) -> Any:
            if isinstance(item, jinja2.Undefined):
                if strict:
                    item._fail_with_undefined_error()
                return None
            raise TypeError(f"a {type(item).__name__} cannot be written as JSON")

        return json.dumps(value, ensure_ascii=False, indent=indent, default=default)

    env.filters["tojson"] = to_json
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
    return env


def _event_data(event: CloudEvent) -> Any:
    """The payload a template sees as ``data``."""
    if not event.data:
        return None
    content_type = (event.datacontenttype or "application/json").lower()
    if "json" not in content_type:
        return event.data.decode("utf-8", errors="replace")
    return event.json_data()


class Template:
    """A compiled, syntax-checked template; build it with :func:`compile_template`."""

    __slots__ = ("_template", "path", "source", "strict")

    def __init__(self, template: jinja2.Template, *, source: str, path: str, strict: bool) -> None:
        self._template = template
        self.source = source
        self.path = path
        self.strict = strict

    def __repr__(self) -> str:
        return f"Template(path={self.path!r}, strict={self.strict})"

    def render(self, event: CloudEvent) -> str:
        """The text for `event`; TemplateError if it cannot be rendered."""
        try:
            data = _event_data(event)
        except InvalidEventError as e:
            raise TemplateError(f"{self.path}: {e}", path=self.path) from None
        attributes = event.attributes()
        return self.render_context({**attributes, "event": attributes, "data": data})

    def render_context(self, context: Mapping[str, Any]) -> str:
        """Render with an explicit context (``data``, attributes, ``event``)."""
        try:
            return self._template.render(context)
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f"{self.path}: undefined value: {e.message}", path=self.path
            ) from None
        except SecurityError as e:
            raise TemplateError(f"{self.path}: not allowed: {e}", path=self.path) from None
        except jinja2.TemplateError as e:
            raise TemplateError(f"{self.path}: {e.message or e}", path=self.path) from None
        except Exception as e:  # a filter or operator failed (TypeError, ZeroDivisionError)
            raise TemplateError(
                f"{self.path}: rendering failed: {type(e).__name__}: {e}", path=self.path
            ) from None


def compile_template(source: str, *, path: str, strict: bool = False) -> Template:
    """Check `source` and compile it; TemplateError names `path`, the line and the problem."""
    if not isinstance(source, str):
        raise TemplateError(
            f"{path}: expected a template string, got {type(source).__name__}", path=path
        )
    env = _make_env(strict)
    try:
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f"{path}: template syntax error on line {e.lineno}: {e.message}", path=path
        ) from None
    except jinja2.TemplateError as e:  # e.g. an unknown filter
        raise TemplateError(f"{path}: invalid template: {e.message or e}", path=path) from None
    return Template(template, source=source, path=path, strict=strict)
