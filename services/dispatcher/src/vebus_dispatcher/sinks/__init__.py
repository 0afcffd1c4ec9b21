"""The sinks events are delivered to, and `build_sink` to make one from a route.

Each sink is a small module with one class and states its guarantee in its docstring:
every sink is at-least-once except `console` and syslog over UDP (at-most-once), and
`nats` to a subject no stream stores (at-most-once).
"""

from __future__ import annotations

from typing import assert_never

from vebus import config
from vebus.delivery.sink import Sink
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
    from vebus_dispatcher.sinks.observed import ObservedSink

    return ObservedSink(sink, ctx.route.name, tel)


def _build(ctx: SinkContext) -> Sink:
    sink = ctx.route.sink
    if isinstance(sink, config.WebhookSink):
        from vebus_dispatcher.sinks.webhook import WebhookSink

        return WebhookSink(sink, ctx)
    if isinstance(sink, config.ConsoleSink):
        from vebus_dispatcher.sinks.console import ConsoleSink

        return ConsoleSink(sink)
    if isinstance(sink, config.SlackSink):
        from vebus_dispatcher.sinks.slack import SlackSink

        return SlackSink(sink, ctx)
    if isinstance(sink, config.TeamsSink):
        from vebus_dispatcher.sinks.teams import TeamsSink

        return TeamsSink(sink, ctx)
    if isinstance(sink, config.PagerDutySink):
        from vebus_dispatcher.sinks.pagerduty import PagerDutySink

        return PagerDutySink(sink, ctx)
    if isinstance(sink, config.HttpSink):
        from vebus_dispatcher.sinks.http import HttpSink

        return HttpSink(sink, ctx)
    if isinstance(sink, config.EmailSink):
        from vebus_dispatcher.sinks.smtp import EmailSink

        return EmailSink(sink, ctx)
    if isinstance(sink, config.EventBridgeSink):
        from vebus_dispatcher.sinks.eventbridge import EventBridgeSink

        return EventBridgeSink(sink, ctx)
    if isinstance(sink, config.SyslogSink):
        from vebus_dispatcher.sinks.syslog import SyslogSink

        return SyslogSink(sink, ctx)
    if isinstance(sink, config.NatsSink):
        from vebus_dispatcher.sinks.natspub import NatsSink

        return NatsSink(sink, ctx)
    if isinstance(sink, config.VsphereSink):
        from vebus_dispatcher.sinks.vsphere import VsphereSink

        return VsphereSink(sink, ctx)
    assert_never(sink)
