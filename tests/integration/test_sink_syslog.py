"""The syslog sink against UDP, TCP and TLS listeners on loopback (asyncio servers here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.support.dispatcher import (
    event,
    eventually,
    inject,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import self_signed_cert
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)$",
    re.S,
)


@dataclass
class Listener:
    """Collects syslog messages: datagrams (UDP) or octet-counted frames (TCP, TLS)."""

    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    #: close each TCP connection after this many messages (0: never)
    close_after: int = 0
    port: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: bytes) -> None:
        self.messages.append(message)
        self.changed.set()

    def parsed(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            match = RFC5424.match(m.decode())
            assert match, m
            out.append(match.groupdict())
        return out

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        seen = 0
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = await reader.readuntil(b" ")
                self.add(await reader.readexactly(int(length[:-1])))
                seen += 1
                if self.close_after and seen >= self.close_after:
                    break
        writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.listener.add(data)


@pytest.fixture
async def listeners(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    udp, tcp, tls = Listener(), Listener(close_after=1), Listener()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Udp(udp), local_addr=("127.0.0.1", 0)
    )
    udp.port = transport.get_extra_info("sockname")[1]
    tcp_server = await asyncio.start_server(tcp.handle, "127.0.0.1", 0)
    tcp.port = tcp_server.sockets[0].getsockname()[1]
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls_server = await asyncio.start_server(tls.handle, "127.0.0.1", 0, ssl=context)
    tls.port = tls_server.sockets[0].getsockname()[1]
    yield {"udp": udp, "tcp": tcp, "tls": tls, "ca_file": str(cert)}
    transport.close()
    for server in (tcp_server, tls_server):
        server.close()


async def test_rfc5424_over_udp_tcp_and_tls(
    stack: Stack, nc: Client, listeners: dict[str, Any]
) -> None:
    udp, tcp, tls = listeners["udp"], listeners["tcp"], listeners["tls"]

    def syslog(transport: str, port: int, **extra: Any) -> dict[str, Any]:
        return {"kind": "syslog", "transport": transport, "host": "127.0.0.1", "port": port,
                **extra}  # fmt: skip

    js = await start_dispatcher(
        stack,
        nc,
        [
            route("udp", sink=syslog("udp", udp.port, facility="auth", severity="info")),
            route("tcp", sink=syslog("tcp", tcp.port, message="{{ data.FullFormattedMessage }}",
                                     hostname="vc01", app_name="vsphere")),
            route("tls", sink=syslog("tls", tls.port, ca_file=listeners["ca_file"])),
        ],
    )  # fmt: skip
    await inject(js, "udp", event(1))
    await inject(js, "tcp", event(2))
    await inject(js, "tls", event(3))

    async def all_three() -> bool | None:
        return True if udp.messages and tcp.messages and tls.messages else None

    await eventually(all_three, "a message on each transport", stack)

    (u,) = udp.parsed()
    assert int(u["pri"]) == 4 * 8 + 6  # auth.info
    assert u["ts"] == "2024-05-01T10:11:12.345678Z"  # the event's time
    assert (u["host"], u["app"], u["msgid"]) == ("vc01.example.com", "vebus", "VmPoweredOffEvent")
    doc = json.loads(u["msg"])  # by default the structured CloudEvent
    assert (doc["id"], doc["data"]["Vm"]["Name"]) == ("1", "test-1")

    (t,) = tcp.parsed()
    assert int(t["pri"]) == 1 * 8 + 5  # the defaults: user.notice
    assert (t["host"], t["app"]) == ("vc01", "vsphere")
    assert t["msg"] == "test-2 on host-1 is powered off"

    (s,) = tls.parsed()
    assert json.loads(s["msg"])["id"] == "3"

    # the TCP listener hung up after its message: the next one comes on a new connection
    await asyncio.sleep(0.3)
    await inject(js, "tcp", event(4))
    await eventually(lambda: _ready(len(tcp.messages) == 2), "a second TCP message", stack)
    assert tcp.connections == 2
    assert tcp.parsed()[1]["msg"] == "test-4 on host-1 is powered off"
    for name in ("udp", "tcp", "tls"):
        await eventually(route_settled(js, name), f"route {name} emptied", stack)


async def _ready(ok: bool) -> bool | None:
    return True if ok else None
