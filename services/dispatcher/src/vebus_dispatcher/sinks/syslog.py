"""The syslog sink: RFC 5424 messages to a SIEM over UDP, TCP or TLS.

One message per event: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - MSG`, where TIMESTAMP
is the event's time, HOSTNAME the vCenter's host (from the event's source) unless set,
MSGID the vSphere event class, and MSG the route's template or, by default, the event as
one structured CloudEvents JSON object. Over TCP and TLS (RFC 5425) messages are framed
by octet counting (`<length> <message>`) on one connection per sink, opened on first use
and again after a failure.

Guarantees: UDP is at-most-once (nothing confirms a datagram; a message longer than
MAX_UDP bytes is cut). Over TCP and TLS an event counts as delivered once its frame is
written and the connection took it (drained); syslog has no application-level receipt, so
the frames still in flight when a connection breaks can be lost: at-least-once up to the
peer's TCP stack. A failed connect or write is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_json
from vebus.errors import ErrorCode, RetryableDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.templating import compile_optional, render

__all__ = ["SyslogSink", "format_message", "frame"]

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
FACILITIES = {name: code for code, name in enumerate(config.SYSLOG_FACILITIES)}
SEVERITIES = {name: code for code, name in enumerate(config.SYSLOG_SEVERITIES)}
#: the longest datagram sent; longer messages are cut
MAX_UDP = 65_000
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _field(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit`, or `-`."""
    text = _NOT_PRINTABLE.sub("_", value or "")[:limit]
    return text or "-"


def _timestamp(value: str | None) -> str:
    """RFC 5424 TIMESTAMP (at most 6 fractional digits) from the event's time, else now."""
    if value:
        text = _FRACTION.sub(r"\1", value.strip())
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return when.isoformat().replace("+00:00", "Z")
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def format_message(
    event: CloudEvent, *, pri: int, hostname: str | None, app_name: str, msg: str
) -> bytes:
    """One RFC 5424 message (no framing)."""
    host = hostname or urlsplit(event.source).hostname or event.source
    header = " ".join(
        (
            f"<{pri}>1",
            _timestamp(event.time),
            _field(host, 255),
            _field(app_name, 48),
            "-",
            _field(event.event_class(), 32),
            "-",
        )
    )
    return f"{header} {msg}".encode()


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 3.4.1, RFC 5425): `<length> <message>`."""
    return str(len(message)).encode() + b" " + message


class SyslogSink:
    """Sends each event as one RFC 5424 message over the configured transport."""

    kind = "syslog"

    def __init__(self, sink: config.SyslogSink, ctx: SinkContext) -> None:
        self._sink = sink
        self._port = sink.port or DEFAULT_PORTS[sink.transport]
        self._pri = FACILITIES[sink.facility] * 8 + SEVERITIES[sink.severity]
        self._message = compile_optional(ctx.route.name, "message", sink.message)
        self._where = f"syslog+{sink.transport}://{sink.host}:{self._port}"
        self._tls: ssl.SSLContext | None = None
        if sink.transport == "tls":
            self._tls = ssl.create_default_context(cafile=sink.ca_file)
            if sink.insecure:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._udp: asyncio.DatagramTransport | None = None

    def message(self, event: CloudEvent) -> bytes:
        """The RFC 5424 message for `event`."""
        if self._message is not None:
            msg = render(self._message, event)
        else:
            msg = to_json(event).decode("utf-8")
        return format_message(
            event, pri=self._pri, hostname=self._sink.hostname, app_name=self._sink.app_name,
            msg=msg,
        )  # fmt: skip

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        message = self.message(event)
        writer: asyncio.StreamWriter | None = None
        try:
            if self._sink.transport == "udp":
                transport = await self._datagram()
                transport.sendto(message[:MAX_UDP])
                return
            _, writer = await self._connection()
            writer.write(frame(message))
            await writer.drain()
        except (OSError, ssl.SSLError, ConnectionError) as e:
            await self._drop(writer)
            raise RetryableDeliveryError(
                f"{self._where}: connection failed: {e!r}", code=ErrorCode.CONNECTION_FAILURE
            ) from e

    async def _datagram(self) -> asyncio.DatagramTransport:
        if self._udp is None or self._udp.is_closing():
            async with self._lock:
                if self._udp is None or self._udp.is_closing():
                    loop = asyncio.get_running_loop()
                    self._udp, _ = await loop.create_datagram_endpoint(
                        asyncio.DatagramProtocol, remote_addr=(self._sink.host, self._port)
                    )
        return self._udp

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self._lock:
            if self._stream is not None:
                reader, writer = self._stream
                if reader.at_eof() or writer.is_closing():  # the server hung up
                    await self._close_stream()
            if self._stream is None:
                self._stream = await asyncio.open_connection(
                    self._sink.host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._sink.host if self._tls else None,
                )
            return self._stream

    async def _drop(self, writer: asyncio.StreamWriter | None = None) -> None:
        """Close the connection (only if it is still `writer`'s, when one is given)."""
        async with self._lock:
            if writer is None or (self._stream is not None and self._stream[1] is writer):
                await self._close_stream()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            _, writer = self._stream
            self._stream = None
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def close(self) -> None:
        await self._drop()
        if self._udp is not None:
            self._udp.close()
