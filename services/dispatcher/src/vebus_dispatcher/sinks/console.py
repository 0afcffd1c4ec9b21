"""The console sink: one line per event on the dispatcher's standard output.

At-most-once by nature: the event counts as delivered once the line is written and flushed;
nothing confirms that anyone read it (a pipe to a dead reader loses what it buffered).
`format: line` prints `time type source id subject` and, for vSphere events, the
event's FullFormattedMessage; `format: json` prints the CloudEvent in the JSON event
format (`vebus.bus.http`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_json
from vebus.errors import ErrorCode, InvalidEventError, PermanentDeliveryError
from vebus_dispatcher.sinks.base import SinkContext

__all__ = ["ConsoleSink", "format_line"]


class ConsoleSink:
    """Writes each event to `stream` (standard output unless given)."""

    kind = "console"

    def __init__(
        self,
        sink: config.ConsoleSink,
        ctx: SinkContext | None = None,
        *,
        stream: TextIO | None = None,
    ) -> None:
        self._sink = sink
        self._stream = stream

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        json = self._sink.format == "json"
        line = to_json(event).decode("utf-8") if json else format_line(event)
        stream = self._stream or sys.stdout
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError) as e:  # ValueError: the stream was closed
            raise PermanentDeliveryError(
                f"cannot write to standard output: {e}", code=ErrorCode.SINK_ERROR
            ) from e

    async def close(self) -> None:
        """Nothing to release: standard output belongs to the process."""


def format_line(event: CloudEvent) -> str:
    """`time type source id subject`, then the FullFormattedMessage of a vSphere event."""
    fields = [event.time, event.type, event.source, event.id, event.subject]
    line = " ".join(" ".join((f or "-").split()) or "-" for f in fields)
    if "eventclass" in event.extensions:
        try:
            data = event.json_data()
        except InvalidEventError:
            data = None
        message = data.get("FullFormattedMessage") if isinstance(data, dict) else None
        if isinstance(message, str) and message.strip():
            line += "  " + " ".join(message.split())
    return line
