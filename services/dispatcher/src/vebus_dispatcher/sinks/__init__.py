"""The sinks events are delivered to, and `build_sink` to make one from a route.

Each sink is a small module with one class and states its guarantee in its docstring:
every sink is at-least-once except `console` and syslog over UDP (at-most-once), and
`nats` to a subject no stream stores (at-most-once).
"""

from __future__ import annotations

import importlib

from vebus import config
from vebus.delivery.sink import Sink
from vebus.errors import ConfigError
from vebus.runtime import telemetry
from vebus_dispatcher.sinks.base import SinkContext

__all__ = ["Sink", "SinkContext", "build_sink"]


def build_sink(ctx: SinkContext) -> Sink:
    """The sink of `ctx.route` (ConfigError if it cannot be made, e.g. a missing extra).

    Sink modules with heavy clients (boto3, pyvmomi) are imported only when a route uses them.
    Inside a service the sink comes wrapped in `ObservedSink` (spans, attempt metrics).
    """
    sink = _build(ctx)
    if (tel := telemetry.current()) is None:
        return sink
    from vebus.runtime.observed import ObservedSink

    return ObservedSink(sink, ctx.route.name, tel)


#: each sink kind's class, imported when a route uses it: "module:Class" under this package
_CLASSES: dict[type[config.Sink], str] = {
    config.WebhookSink: "webhook:WebhookSink",
    config.ConsoleSink: "console:ConsoleSink",
    config.SlackSink: "slack:SlackSink",
    config.TeamsSink: "teams:TeamsSink",
    config.PagerDutySink: "pagerduty:PagerDutySink",
    config.HttpSink: "http:HttpSink",
    config.EmailSink: "smtp:EmailSink",
    config.EventBridgeSink: "eventbridge:EventBridgeSink",
    config.SyslogSink: "syslog:SyslogSink",
    config.NatsSink: "natspub:NatsSink",
    config.VsphereSink: "vsphere:VsphereSink",
}


def _build(ctx: SinkContext) -> Sink:
    sink = ctx.route.sink
    where = _CLASSES.get(type(sink))
    if where is None:
        raise ConfigError(
            [f"route {ctx.route.name}: the dispatcher has no {ctx.route.sink_kind} sink"]
        )
    module, _, name = where.partition(":")
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    made: Sink = cls(sink, ctx)
    return made
