"""The parts of nats-py vebus needs that nats-py does not make public, in one place.

The pull worker speaks JetStream's pull protocol itself (vebus.bus.consume explains why),
so it needs the JetStream context's connection and API prefix; publishers check a
message's size against the connection's max_payload. nats-py 2.x keeps these on private
attributes with no getter. Nothing else in vebus touches a private nats-py name:
tests/unit/test_natsapi.py checks each against a real connection, so an upgrade of nats-py
that moves one fails there, with its name, before anything misbehaves.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext

__all__ = ["api_prefix", "connection", "max_payload"]


def connection(js: JetStreamContext) -> Client:
    """The NATS connection a JetStream context sends its requests on."""
    nc: Client = js._nc
    return nc


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API subject prefix of the context (`$JS.API`, or a domain's)."""
    prefix: str = js._prefix
    return prefix


def max_payload(js: JetStreamContext) -> int:
    """The largest message (headers and body) the server takes from this connection."""
    return connection(js).max_payload
