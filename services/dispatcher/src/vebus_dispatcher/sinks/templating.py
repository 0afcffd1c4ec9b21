"""A sink's text fields: compiled once when the sink is built, rendered once per event.

A template that fails to render is a permanent failure (TEMPLATE_ERROR): the event becomes
a dead letter at once, it is not retried.
"""

from __future__ import annotations

from vebus.bus.cloudevent import CloudEvent
from vebus.errors import ConfigError, ErrorCode, PermanentDeliveryError, TemplateError
from vebus.events.templates import Template, compile_template

__all__ = ["compile_field", "compile_optional", "render"]


def compile_field(route: str, field: str, source: str) -> Template:
    """The compiled template of `routes[<route>].sink.<field>` (ConfigError if broken)."""
    path = f"route {route}: sink.{field}"
    try:
        return compile_template(source, path=path)
    except TemplateError as e:
        raise ConfigError([str(e)]) from None


def compile_optional(route: str, field: str, source: str | None) -> Template | None:
    """As compile_field, for a field that may be left out."""
    return None if source is None else compile_field(route, field, source)


def render(template: Template, event: CloudEvent) -> str:
    """The text for `event`; PermanentDeliveryError (TEMPLATE_ERROR) if it cannot be made."""
    try:
        return template.render(event)
    except TemplateError as e:
        raise PermanentDeliveryError(
            f"event {event.id}: {e}", code=ErrorCode.TEMPLATE_ERROR
        ) from None
