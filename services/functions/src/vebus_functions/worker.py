"""A Python function's worker process: `python -m vebus_functions.worker`.

Started by the functions service (vebus_functions.python_runtime) with a clean
environment (the function's `env` and `secrets`, PATH, HOME, LANG: nothing of the
service's), in the function's `workdir`, possibly as another user. It loads the function
once and then runs one invocation at a time, as long as the service keeps its standard
input open (vebus_functions.protocol says what goes over it).

`handle(event, ctx)` may be `def` or `async def`. What it does decides the result:

| the function                        | result                                        |
|-------------------------------------|-----------------------------------------------|
| returns (None, a dict, a list)      | done; a dict or each dict of a list, and each |
|                                     | `ctx.reply(...)`, is a reply event            |
| raises RetryLater(after=s)          | retry (after s, else the route's backoff)     |
| raises Reject                       | reject: a dead letter, not retried            |
| raises anything else                | error, with the traceback: retried by policy  |
| hangs                               | killed by the service at its timeout          |
| kills its process                   | no outcome: retried, POISON if it always does |

A function that exits the process (`sys.exit`, `os._exit`) ends its worker like a crash.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import msgspec

from vebus_functions import Reject, RetryLater, protocol
from vebus_functions.context import Context, VCenters
from vebus_functions.event import Event

__all__ = ["load_handler", "main"]


def load_handler(target: str, workdir: str) -> Callable[..., Any]:
    """The callable `target` names: `file.py:attr` (relative to `workdir`) or
    `package.module:attr` (attr defaults to `handle`)."""
    where, _, attr = target.strip().rpartition(":") if ":" in target else (target, "", "handle")
    attr = attr or "handle"
    if where.endswith(".py") or "/" in where:
        path = Path(workdir, where)
        name = f"vebus_function_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))  # its own helper modules next to it
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise AttributeError(f"{target}: {where} has no function {attr!r}")
    return handler  # type: ignore[no-any-return]


class _Pipe:
    """Framed messages over two file descriptors (blocking: one invocation at a time)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self._r: BinaryIO = os.fdopen(rfd, "rb", buffering=0)
        self._w: BinaryIO = os.fdopen(wfd, "wb", buffering=0)

    def _read(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._r.read(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def receive(self) -> protocol.Message | None:
        header = self._read(protocol.HEADER.size)
        if header is None:
            return None
        body = self._read(protocol.frame_length(header))
        return None if body is None else protocol.decode(body)

    def send(self, message: protocol.Message) -> None:
        self._w.write(protocol.encode(message))


def _replies_of(value: Any) -> list[bytes]:
    """Reply events from what the function returned: None, a dict, or a list of dicts."""
    import json

    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise TypeError(
                f"the function returned {type(item).__name__}: return None, a dict (a reply "
                "event's data, or a whole event with specversion) or a list of dicts"
            )
        doc = item if "specversion" in item else {"specversion": "1.0", "data": item}
        out.append(json.dumps(doc, default=str).encode())
    return out


def _run(
    handler: Callable[..., Any],
    loop: asyncio.AbstractEventLoop,
    init: protocol.Init,
    call: protocol.Invoke,
    vcenters: VCenters,
    secrets: Mapping[str, str],
) -> protocol.Result:
    event = Event(call.event)
    ctx = Context(
        function=init.function,
        event=event,
        route=call.route,
        vcenter=call.vcenter,
        traceparent=call.traceparent,
        secrets=secrets,
        vcenters=vcenters,
    )
    try:
        value = handler(event, ctx)
        if inspect.isawaitable(value):
            value = loop.run_until_complete(_awaited(value))
        replies = _replies_of(value) + ctx._take_replies()
    except RetryLater as e:
        return protocol.Result(seq=call.seq, status="retry", message=str(e) or "retry later",
                               retry_after=e.after)  # fmt: skip
    except Reject as e:
        return protocol.Result(seq=call.seq, status="reject", message=str(e) or "rejected",
                               detail=traceback.format_exc())  # fmt: skip
    except Exception as e:
        return protocol.Result(
            seq=call.seq,
            status="error",
            message=f"{type(e).__name__}: {e}",
            detail=traceback.format_exc(),
        )
    finally:
        if ctx._has_http:
            loop.run_until_complete(ctx._aclose())
    return protocol.Result(seq=call.seq, status="done", replies=replies)


async def _awaited(value: Any) -> Any:
    return await value


def main() -> int:
    # the protocol keeps copies of stdin and stdout; 0 reads nothing, 1 and 2 are the log
    pipe = _Pipe(os.dup(0), os.dup(1))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)  # fmt: skip
    first = pipe.receive()
    if not isinstance(first, protocol.Init):
        return 2
    init = first
    try:
        os.chdir(init.workdir)
        handler = load_handler(init.target, init.workdir)
    except BaseException as e:  # SyntaxError, ImportError, SystemExit in module code, ...
        pipe.send(protocol.InitFailed(error=f"{type(e).__name__}: {e}",
                                      detail=traceback.format_exc()))  # fmt: skip
        return 3
    pipe.send(protocol.Ready(pid=os.getpid()))
    loop = asyncio.new_event_loop()
    vcenters = VCenters(init.function, init.vcenters)
    secrets = MappingProxyType({k: os.environ.get(k, "") for k in init.secrets})
    try:
        while True:
            try:
                message = pipe.receive()
            except (msgspec.DecodeError, ValueError):
                return 2
            if message is None:  # the service closed stdin: stop
                return 0
            if isinstance(message, protocol.Invoke):
                pipe.send(_run(handler, loop, init, message, vcenters, secrets))
    finally:
        vcenters.close()
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
