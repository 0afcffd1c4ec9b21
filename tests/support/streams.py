"""Reading what a stream holds, for assertions."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError


async def stream_messages(nc: Client, stream: str, subject: str) -> list[RawStreamMsg]:
    """Every message of `stream` on `subject` (wildcards allowed), in stream order."""
    js = nc.jetstream()
    out: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return out
        out.append(raw)
        seq = int(raw.seq or 0) + 1
