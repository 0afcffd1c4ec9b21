"""The command runtime: one process per event, in any language (a shell script, Python,
PowerShell with PowerCLI where pwsh is installed).

The program gets the event as one structured CloudEvent (JSON) on its standard input, the
function's `env` and `secrets` in its environment (nothing else of the service's), and
runs in the function's `workdir`. At most `workers` run at once per functions replica.

| the program                      | outcome                                             |
|----------------------------------|-----------------------------------------------------|
| exits 0                          | done; a JSON object (or array of them) on stdout is |
|                                  | a reply; other stdout is logged as output          |
| exits 75 (EX_TEMPFAIL)           | retry later (the route's backoff)                   |
| exits 65 (EX_DATAERR)            | reject: a dead letter now, not retried              |
| exits with another status        | error, with the tail of stderr: retried by policy   |
| runs past the function's timeout | killed with its process group: timeout              |
| is killed by a signal            | crashed: no outcome (POISON if it always is)         |
| cannot be started                | unavailable (the command is missing)                |

Its standard error is the function's output (vebus_functions.output); standard output is
read up to STDOUT_MAX bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any

from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import to_json
from vebus.config import FunctionConfig
from vebus_functions.output import TAIL_LINES, FunctionOutput
from vebus_functions.process import Spawner, kill_group
from vebus_functions.runtime import Call, Outcome, describe_exit

__all__ = ["EXIT_REJECT", "EXIT_RETRY", "STDOUT_MAX", "CommandRuntime"]

log = logging.getLogger(__name__)

#: exit statuses with a meaning (sysexits.h: EX_TEMPFAIL, EX_DATAERR)
EXIT_RETRY = 75
EXIT_REJECT = 65
#: bytes of standard output read (a reply); past it the invocation is an error
STDOUT_MAX = 1024 * 1024


class CommandRuntime:
    """Runs a function's command once per event (see the module docstring)."""

    def __init__(self, function: FunctionConfig, spawner: Spawner, output: FunctionOutput) -> None:
        assert function.command is not None
        self.function = function
        self._spawner = spawner
        self._output = output
        self._slots = asyncio.Semaphore(function.workers)
        self._running: set[asyncio.subprocess.Process] = set()
        self.started = 0
        self.problem: str | None = None

    async def start(self) -> None:
        pass

    async def invoke(self, event: CloudEvent, call: Call) -> Outcome:
        async with self._slots:
            return await self._run(event, call)

    async def _run(self, event: CloudEvent, call: Call) -> Outcome:
        assert self.function.command is not None
        extra = {"TRACEPARENT": call.traceparent} if call.traceparent else None
        try:
            proc = await self._spawner.spawn(
                self.function.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                extra_env=extra,
            )
        except OSError as e:
            self.problem = f"cannot start {self.function.command[0]!r}: {e.strerror or e}"
            return Outcome(status="unavailable", message=self.problem)
        self.problem = None
        self.started += 1
        self._running.add(proc)
        started = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        errors = asyncio.create_task(self._output.pump(proc.stderr, proc.pid, tail))
        stdout = asyncio.create_task(_read_bounded(proc.stdout))
        timed_out = False
        try:
            with contextlib.suppress(ConnectionError):  # it need not read its input
                proc.stdin.write(to_json(event))
                await proc.stdin.drain()
                proc.stdin.close()
            timeout = self.function.timeout
            try:
                async with asyncio.timeout(float(timeout) if timeout is not None else None):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                kill_group(proc)
                await proc.wait()
        except asyncio.CancelledError:
            kill_group(proc)  # the route's timeout
            stdout.cancel()
            errors.cancel()
            raise
        finally:
            self._running.discard(proc)
        kill_group(proc)  # whatever it left running in its group
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(errors, 2.0)
        out, overflow = await stdout
        duration = time.monotonic() - started
        tail_text = "\n".join(tail) or None
        code = proc.returncode
        if timed_out:
            return Outcome(
                status="timeout",
                message=f"command of function {self.function.name} ran past its timeout of "
                f"{float(self.function.timeout or 0):g}s: killed (pid {proc.pid})",
                detail=tail_text,
                duration=duration,
            )
        if code is not None and code < 0:
            what = f"its command (pid {proc.pid}) {describe_exit(code)}"
            return Outcome(status="crashed", message=what, detail=tail_text, duration=duration)
        if code == EXIT_RETRY:
            return Outcome(status="retry", message=f"the command exited {code}: retry later",
                           detail=tail_text, duration=duration)  # fmt: skip
        if code == EXIT_REJECT:
            return Outcome(status="reject", message=f"the command exited {code}: rejected",
                           detail=tail_text, duration=duration)  # fmt: skip
        if code != 0:
            return Outcome(status="error", message=f"the command exited {code}",
                           detail=tail_text, duration=duration)  # fmt: skip
        if overflow:
            what = f"the command wrote more than {STDOUT_MAX} bytes to stdout"
            return Outcome(status="error", message=what, detail=tail_text, duration=duration)
        return Outcome(status="done", replies=await self._replies(out, proc.pid),
                       duration=duration)  # fmt: skip

    async def _replies(self, out: bytes, pid: int) -> list[bytes]:
        """Reply objects from standard output: one JSON object or an array of them; any
        other output is logged as the function's output (and is no reply)."""
        text = out.strip()
        if not text:
            return []
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return [text]
        if isinstance(doc, list) and all(isinstance(d, dict) for d in doc):
            return [json.dumps(d).encode() for d in doc]
        for line in out.decode("utf-8", "replace").splitlines()[-50:]:
            await self._output.line(pid, line)
        return []

    async def close(self) -> None:
        for proc in list(self._running):
            kill_group(proc)

    def state(self) -> dict[str, Any]:
        return {
            "workers": self.function.workers,
            "busy": len(self._running),
            "started": self.started,
            "problem": self.problem,
        }


async def _read_bounded(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Up to STDOUT_MAX bytes of `reader` (the rest is read and dropped); whether there was
    more."""
    buf = bytearray()
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
        if len(buf) < STDOUT_MAX:
            buf += chunk[: STDOUT_MAX - len(buf)]
    return bytes(buf), total > STDOUT_MAX
