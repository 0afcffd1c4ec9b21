"""A function's output (what its processes print): read with bounds, so that a function
that floods its log cannot slow the service or fill its memory.

Each function has one FunctionOutput that every one of its processes' output pipes feeds:

- reading costs the service at most BYTES_PER_SECOND of a function's output: past it, the
  service stops reading that function's pipes for a moment, the pipes fill and the
  function's own writes block (the flood slows the function that makes it, nothing else);
- a line is cut at LINE_MAX characters; every value of the function's secrets is replaced
  by `***` in what is kept, logged or published;
- at most LINES_PER_SECOND lines (bursts of LINES_BURST) go on to the service's log, the
  recent-lines ring (`vebus fn logs`) and the live subject
  (`vebus.functions.logs.<function>`); the rest are counted and said to be dropped;
- each process keeps its last TAIL_LINES lines whatever the rate: the tail that a dead
  letter of a crash or a timeout carries.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec

__all__ = ["BYTES_PER_SECOND", "LINE_MAX", "FunctionOutput", "OutputLine"]

log = logging.getLogger("vebus_functions.output")

#: bytes of one function's output the service reads per second at most
BYTES_PER_SECOND = 1024 * 1024
#: lines per second (and the burst) that are logged, kept and published per function
LINES_PER_SECOND = 200.0
LINES_BURST = 1000.0
#: characters of one line kept
LINE_MAX = 4000
#: lines of each process kept for a dead letter's detail
TAIL_LINES = 40
#: recent lines kept per function for `vebus fn logs`
RING_LINES = 500
_READ = 64 * 1024

#: sends one line to the live subject (the service's NATS publish)
Publisher = Callable[[bytes], Awaitable[None]]


class OutputLine(msgspec.Struct, frozen=True, array_like=True):
    """One line of a function's output: when (epoch seconds), which process, the text."""

    at: float
    pid: int
    text: str


class FunctionOutput:
    """The output of one function's processes (see the module docstring)."""

    def __init__(
        self,
        function: str,
        *,
        secrets: Iterable[str] = (),
        publish: Publisher | None = None,
        echo: Callable[[OutputLine], None] | None = None,
        log_lines: bool = True,
    ) -> None:
        self.function = function
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._publish = publish
        self._echo = echo
        self._log_lines = log_lines
        self.ring: collections.deque[OutputLine] = collections.deque(maxlen=RING_LINES)
        self.dropped = 0
        self._unreported = 0
        self._tokens = LINES_BURST
        self._refilled = time.monotonic()
        self._budget = float(BYTES_PER_SECOND)
        self._budget_at = time.monotonic()
        self._encoder = msgspec.json.Encoder()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    async def pump(
        self, reader: asyncio.StreamReader, pid: int, tail: collections.deque[str]
    ) -> None:
        """Read one process's output until it closes it."""
        pending = b""
        while True:
            await self._within_budget()
            chunk = await reader.read(_READ)
            if not chunk:
                break
            self._budget -= len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > LINE_MAX:  # no newline for a long while: a line of its own
                lines.append(pending)
                pending = b""
            for raw in lines:
                await self.line(pid, raw.decode("utf-8", "replace"), tail)
        if pending:
            await self.line(pid, pending.decode("utf-8", "replace"), tail)

    async def _within_budget(self) -> None:
        """Wait while this function's output has used up its bytes for now."""
        while True:
            now = time.monotonic()
            self._budget = min(
                float(BYTES_PER_SECOND), self._budget + (now - self._budget_at) * BYTES_PER_SECOND
            )
            self._budget_at = now
            if self._budget > 0:
                return
            await asyncio.sleep(min(1.0, -self._budget / BYTES_PER_SECOND + 0.01))

    async def line(self, pid: int, text: str, tail: collections.deque[str] | None = None) -> None:
        """One line of output of process `pid`."""
        text = text.rstrip("\r")
        if len(text) > LINE_MAX:
            text = text[:LINE_MAX] + " [...]"
        text = self.redact(text)
        if tail is not None:
            tail.append(text)
        now = time.monotonic()
        self._tokens = min(LINES_BURST, self._tokens + (now - self._refilled) * LINES_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            self.dropped += 1
            self._unreported += 1
            return
        self._tokens -= 1
        if self._unreported:
            count, self._unreported = self._unreported, 0
            await self._emit(OutputLine(time.time(), pid, f"[vebus: {count} line(s) of output "
                             f"dropped: over {LINES_PER_SECOND:g} lines/s]"))  # fmt: skip
        await self._emit(OutputLine(time.time(), pid, text))

    async def _emit(self, line: OutputLine) -> None:
        self.ring.append(line)
        if self._log_lines:
            log.info("%s[%d]: %s", self.function, line.pid, line.text)
        if self._echo is not None:
            self._echo(line)
        if self._publish is not None:
            try:
                await self._publish(self._encoder.encode(line))
            except Exception as e:  # a live view is at-most-once: never fail the function
                log.debug("publishing %s's output failed: %r", self.function, e)

    def recent(self, lines: int) -> list[OutputLine]:
        """The last `lines` lines kept."""
        return list(self.ring)[-lines:] if lines > 0 else []
