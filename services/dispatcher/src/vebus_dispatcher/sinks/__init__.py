"""The sinks events are delivered to, and `build_sink` to make one from a route."""

from __future__ import annotations

from typing import assert_never

import aiohttp

from vebus import config
from vebus_dispatcher.sinks.base import Sink
from vebus_dispatcher.sinks.console import ConsoleSink
from vebus_dispatcher.sinks.webhook import WebhookSink

__all__ = ["ConsoleSink", "Sink", "WebhookSink", "build_sink"]


def build_sink(route: config.Route, session: aiohttp.ClientSession) -> Sink:
    """The sink for `route`; HTTP sinks share `session` (one connection pool per process)."""
    sink = route.sink
    if isinstance(sink, config.WebhookSink):
        return WebhookSink(sink, session)
    if isinstance(sink, config.ConsoleSink):
        return ConsoleSink(sink)
    assert_never(sink)
