"""Stream, subject, consumer and bucket names: the public API of vebus on NATS."""

from __future__ import annotations

import re

__all__ = [
    "CHECKPOINT_BUCKET",
    "DISPATCHER_DURABLE_PREFIX",
    "DLQ_INVALID_ROUTE",
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "RESERVED_SOURCES",
    "ROUTES_STREAM",
    "dispatcher_durable",
    "dlq_subject",
    "event_subject",
    "route_subject",
    "token",
]

EVENTS_STREAM = "VEBUS_EVENTS"
ROUTES_STREAM = "VEBUS_ROUTES"
DLQ_STREAM = "VEBUS_DLQ"

EVENTS_SUBJECTS = "vebus.events.>"
ROUTES_SUBJECTS = "vebus.routes.>"
DLQ_SUBJECTS = "vebus.dlq.>"

CHECKPOINT_BUCKET = "vebus_checkpoints"
FILTER_DURABLE = "vebus-filter"

#: a dead letter of an event that failed before any route was chosen
DLQ_INVALID_ROUTE = "_invalid"
#: names a vCenter may not take: they are the other event sources' subject tokens
RESERVED_SOURCES = frozenset({"webhook", "checks"})

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """One subject token: every character outside [A-Za-z0-9_-] becomes `_`."""
    return _UNSAFE.sub("_", value) or "_"


def event_subject(source: str, event_class: str) -> str:
    """`vebus.events.<source>.<class>`, always four tokens."""
    return f"vebus.events.{token(source)}.{token(event_class)}"


def route_subject(route: str) -> str:
    """`vebus.routes.<route>`."""
    return f"vebus.routes.{token(route)}"


def dlq_subject(route: str) -> str:
    """`vebus.dlq.<route>`; `vebus.dlq._invalid` for events that failed before routing."""
    return f"vebus.dlq.{token(route)}"


#: every dispatcher consumer's name starts so: the route name follows
DISPATCHER_DURABLE_PREFIX = "vebus-dispatch-"


def dispatcher_durable(route: str) -> str:
    """The durable consumer name the dispatchers share for one route."""
    return f"{DISPATCHER_DURABLE_PREFIX}{token(route)}"
