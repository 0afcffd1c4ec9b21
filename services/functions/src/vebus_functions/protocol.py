"""What the functions service and a Python worker process say to each other.

Messages are msgpack (msgspec), each framed by its length (4 bytes, big-endian), over the
worker's standard input (service -> worker) and a copy of its original standard output
(worker -> service); the worker points its file descriptors 1 and 2 at the output pipe
the service reads as the function's log, so nothing the function prints can corrupt the
protocol.

    service                          worker
    Init(function, target, ...)  ->
                                 <-  Ready(pid)  |  InitFailed(error, detail)
    Invoke(seq, event, ...)      ->
                                 <-  Result(seq, status, ...)
    (close stdin)                ->  exits 0

Secrets are not in these messages: they are in the worker's environment. vCenter accounts
are (a password in a pipe is not visible in /proc the way an environment is).
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from vebus.bus.cloudevent import CloudEvent
from vebus.config import VCenterEndpoint

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "STATUSES",
    "Init",
    "InitFailed",
    "Invoke",
    "Message",
    "Ready",
    "Result",
    "Status",
    "decode",
    "encode",
    "frame_length",
]

#: the length prefix of every frame
HEADER = struct.Struct(">I")
#: the largest frame either side accepts (an event is at most NATS max_payload)
MAX_FRAME = 64 * 1024 * 1024

#: how an invocation ended, as the runtimes report it:
#: done, retry (asked to be called later), reject (refused for good), error (raised /
#: failed), timeout (killed at the function's timeout), crashed (the process died: no
#: outcome), unavailable (the function cannot be started)
Status = Literal["done", "retry", "reject", "error", "timeout", "crashed", "unavailable"]
STATUSES: tuple[Status, ...] = (
    "done", "retry", "reject", "error", "timeout", "crashed", "unavailable",
)  # fmt: skip


class Init(msgspec.Struct, frozen=True, kw_only=True, tag="init"):
    """The function a worker runs."""

    function: str
    #: `file.py:handle` or `package.module:handle`
    target: str
    workdir: str
    #: the names of the secret variables in the environment (`ctx.secrets`)
    secrets: list[str] = msgspec.field(default_factory=list)
    #: vCenter name -> how to log in (only for a function with `vcenter:` set)
    vcenters: dict[str, VCenterEndpoint] = msgspec.field(default_factory=dict)


class Ready(msgspec.Struct, frozen=True, kw_only=True, tag="ready"):
    """The function's code is loaded."""

    pid: int


class InitFailed(msgspec.Struct, frozen=True, kw_only=True, tag="init_failed"):
    """The function's code could not be loaded (`detail`: the traceback)."""

    error: str
    detail: str = ""


class Invoke(msgspec.Struct, frozen=True, kw_only=True, tag="invoke"):
    """Run the function once on `event`."""

    seq: int
    event: CloudEvent
    route: str
    #: the `vcenters[]` name the event came from, when known
    vcenter: str | None = None
    traceparent: str | None = None


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result"):
    """How one invocation ended."""

    seq: int
    status: Status
    message: str = ""
    #: a traceback, for status error
    detail: str | None = None
    #: seconds, for status retry
    retry_after: float | None = None
    #: the reply events, each a JSON object (see vebus_functions.replies)
    replies: list[bytes] = msgspec.field(default_factory=list)


Message = Init | Ready | InitFailed | Invoke | Result

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """One frame: the length, then the message."""
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The length of the frame whose 4-byte header this is (ValueError when too long)."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the limit of {MAX_FRAME}")
    return int(length)


def decode(body: bytes) -> Message:
    """A message from a frame's body (msgspec.DecodeError if it is not one)."""
    message: Message = _decoder.decode(body)
    return message
