"""Reading what a stream holds, for assertions."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError


async def stream_messages(
    nc: Client, stream: str, subject: str, *, direct: bool = True
) -> list[RawStreamMsg]:
    """Every message of `stream` on `subject` (wildcards allowed), in stream order."""
    return await read_stream(nc.jetstream(), stream, subject, direct=direct)


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, *, direct: bool = True
) -> list[RawStreamMsg]:
    """The same through a JetStream context. `direct=False` asks the stream's leader
    through the API: for a stream without direct get (VEBUS_ROUTES), or for what the leader
    holds after a fault. None (an empty list) once past the last, or if the stream is gone."""
    out: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=direct)
        except NotFoundError:
            return out
        out.append(raw)
        seq = int(raw.seq or 0) + 1
