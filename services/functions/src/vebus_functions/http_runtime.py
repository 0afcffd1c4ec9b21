"""The http runtime: an existing VEBA (Knative) function, unchanged, as a server that vebus
starts and supervises.

The server (`http.command`) starts in the function's `workdir` with a clean environment:
`PORT` (the port on 127.0.0.1 it must listen on, as Knative sets it), `K_SERVICE` (the
function's name), and the function's `env` and `secrets` as environment variables, the way
VEBA mounts a function's secrets. Once it accepts connections (or answers `ready_path`
below 500) it gets the events as VEBA sends them: an HTTP POST to `path` in the
CloudEvents binary mode (`ce-` headers, the event's data as the body). At most `workers`
requests are in flight per functions replica.

| the server                             | outcome                                          |
|----------------------------------------|--------------------------------------------------|
| answers 2xx                            | done; a CloudEvent in the answer (ce- headers or |
|                                        | structured) is a reply                           |
| answers 429                            | retry later (Retry-After honoured)               |
| answers another 4xx                    | reject: a dead letter now                        |
| answers 5xx                            | error, with the start of the body: retried       |
| gives no answer within `timeout`       | timeout; the server is killed and started again  |
| dies during the request                | crashed: no outcome; started again               |
| is not ready (starting, cannot start)  | the event waits for it; unavailable if it cannot |
|                                        | start                                            |

A server that exits is started again after a growing delay (RestartBackoff), on a new port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from vebus import names
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import STRUCTURED_CONTENT_TYPE, from_http, to_binary, to_json
from vebus.config import FunctionConfig
from vebus.errors import InvalidEventError
from vebus_functions.output import TAIL_LINES, FunctionOutput
from vebus_functions.process import Spawner, free_port, kill_group
from vebus_functions.runtime import Call, Outcome, RestartBackoff, describe_exit

__all__ = ["HttpRuntime", "reply_of_http"]

log = logging.getLogger(__name__)

#: how often readiness is checked while the server starts
READY_POLL = 0.1
#: how long an event waits for a server that is starting
WAIT_READY = 60.0
#: bytes of an error answer kept as the dead letter's detail
BODY_DETAIL = 2000


def reply_of_http(headers: Mapping[str, str], body: bytes) -> bytes | None:
    """The reply event an HTTP function answered with, as a reply object (JSON; see
    vebus_functions.replies), or None: a structured CloudEvent body, or `ce-type` with the
    other `ce-` headers of the binary mode (Knative's way of replying). Attributes vebus
    sets itself on a reply (source, id) may be left out."""
    lower = {k.lower(): v for k, v in headers.items()}
    media = lower.get(names.CONTENT_TYPE, "").split(";")[0].strip().lower()
    if media != STRUCTURED_CONTENT_TYPE:
        if names.CE_PREFIX + "type" not in lower:
            return None
        lower.setdefault(names.CE_PREFIX + "specversion", "1.0")
        lower.setdefault(names.CE_PREFIX + "source", "urn:function")
        lower.setdefault(names.CE_PREFIX + "id", "reply")
        if body and names.CONTENT_TYPE not in lower:
            lower[names.CONTENT_TYPE] = "application/json"
    return to_json(from_http(lower, body))


class HttpRuntime:
    """A function server and the requests sent to it (see the module docstring)."""

    def __init__(self, function: FunctionConfig, spawner: Spawner, output: FunctionOutput) -> None:
        assert function.http is not None
        self.function = function
        self.http = function.http
        self._spawner = spawner
        self._output = output
        self._slots = asyncio.Semaphore(function.workers)
        self._ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._port = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._closing = False
        self._backoff = RestartBackoff()
        self._supervisor: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._killed_for: str | None = None
        self.restarts = 0
        self.problem: str | None = None
        self._in_flight = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, self.function.workers))
        )
        self._supervisor = asyncio.create_task(self._supervise())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), float(self.http.start_timeout))

    async def _supervise(self) -> None:
        delay = 0.0
        while not self._closing:
            if delay:
                await asyncio.sleep(delay)
            self._port = free_port()
            self._killed_for = None
            try:
                proc = await self._spawner.spawn(
                    self.http.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    extra_env={names.ENV_PORT: str(self._port), "K_SERVICE": self.function.name},
                )
            except OSError as e:
                self.problem = f"cannot start {self.http.command[0]!r}: {e.strerror or e}"
                log.error("function %s: %s", self.function.name, self.problem)
                delay = self._backoff.failed() or 1.0
                continue
            self._proc = proc
            assert proc.stdout is not None
            assert proc.stderr is not None
            pumps = [
                asyncio.create_task(self._output.pump(proc.stdout, proc.pid, self._tail)),
                asyncio.create_task(self._output.pump(proc.stderr, proc.pid, self._tail)),
            ]
            ready = asyncio.create_task(self._wait_ready(proc))
            exited = asyncio.create_task(proc.wait())
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not ready.cancelled() and ready.result():
                self.problem = None
                self._ready.set()
                log.info("function %s: server ready on 127.0.0.1:%d (pid %d)",
                         self.function.name, self._port, proc.pid)  # fmt: skip
            else:
                ready.cancel()
                if not exited.done():
                    self._killed_for = "not ready in time"
                    kill_group(proc)
                self.problem = (
                    f"its server did not become ready within {float(self.http.start_timeout):g}s"
                    if self._killed_for else
                    f"its server ended at start: {describe_exit(await exited)}"
                )  # fmt: skip
            await exited
            self._ready.clear()
            kill_group(proc)
            await asyncio.gather(*pumps, return_exceptions=True)
            if self._closing:
                return
            why = self._killed_for or describe_exit(proc.returncode)
            log.warning("function %s: server (pid %d) ended: %s; starting it again",
                        self.function.name, proc.pid, why)  # fmt: skip
            self.restarts += 1
            delay = self._backoff.failed()

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + float(self.http.start_timeout)
        while time.monotonic() < deadline and proc.returncode is None:
            if await self._is_ready():
                return True
            await asyncio.sleep(READY_POLL)
        return False

    async def _is_ready(self) -> bool:
        if self.http.ready_path is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://127.0.0.1:{self._port}{self.http.ready_path}",
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                return r.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def invoke(self, event: CloudEvent, call: Call) -> Outcome:
        async with self._slots:
            if not self._ready.is_set():
                if self.problem is not None:
                    return Outcome(status="unavailable", message=self.problem,
                                   detail="\n".join(self._tail) or None)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), WAIT_READY)
                if not self._ready.is_set():
                    return Outcome(status="unavailable", message=self.problem or "not ready")
            self._in_flight += 1
            try:
                return await self._post(event, call)
            finally:
                self._in_flight -= 1

    async def _post(self, event: CloudEvent, call: Call) -> Outcome:
        assert self._session is not None
        proc = self._proc
        headers, body = to_binary(event)
        if call.traceparent:
            headers[names.TRACEPARENT] = call.traceparent
        url = f"http://127.0.0.1:{self._port}{self.http.path}"
        timeout = self.function.timeout
        started = time.monotonic()
        try:
            async with asyncio.timeout(float(timeout) if timeout is not None else None):
                async with self._session.post(url, data=body, headers=headers) as r:
                    answer = await r.read()
                    status, answer_headers = r.status, dict(r.headers)
        except TimeoutError:
            if proc is not None:
                self._killed_for = "a request ran past the function's timeout"
                kill_group(proc)
            return Outcome(
                status="timeout",
                message=f"function {self.function.name} gave no answer within its timeout of "
                f"{float(timeout or 0):g}s: its server was killed and is started again",
                detail="\n".join(self._tail) or None,
                duration=time.monotonic() - started,
            )
        except aiohttp.ClientError as e:
            await asyncio.sleep(0.05)
            if proc is not None and proc.returncode is not None:
                return Outcome(status="crashed", detail="\n".join(self._tail) or None,
                               message=f"its server (pid {proc.pid}) died during the request: "
                               f"{describe_exit(proc.returncode)}",
                               duration=time.monotonic() - started)  # fmt: skip
            return Outcome(status="error", message=f"POST {url} failed: {e!r}",
                           duration=time.monotonic() - started)  # fmt: skip
        duration = time.monotonic() - started
        self._backoff.succeeded()
        text = answer[:BODY_DETAIL].decode("utf-8", "replace")
        if 200 <= status < 300:
            try:
                reply = reply_of_http(answer_headers, answer)
            except InvalidEventError as e:
                return Outcome(status="error", message=f"its answer is no CloudEvent: {e}",
                               duration=duration)  # fmt: skip
            return Outcome(status="done", replies=[reply] if reply else [], duration=duration)
        if status == 429:
            after = answer_headers.get("Retry-After", "")
            return Outcome(status="retry", message=f"it answered 429: {text[:200]}",
                           retry_after=float(after) if after.isdigit() else None,
                           duration=duration)  # fmt: skip
        if 400 <= status < 500:
            return Outcome(status="reject", message=f"it answered {status}: {text[:200]}",
                           detail=text or None, duration=duration)  # fmt: skip
        return Outcome(status="error", message=f"it answered {status}: {text[:200]}",
                       detail=text or None, duration=duration)  # fmt: skip

    async def close(self) -> None:
        self._closing = True
        if self._proc is not None:
            if self._proc.returncode is None:
                self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5.0)
            except TimeoutError:
                kill_group(self._proc)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._proc is not None:
            kill_group(self._proc)
        if self._session is not None:
            await self._session.close()

    def state(self) -> dict[str, Any]:
        return {
            "workers": self.function.workers,
            "ready": self._ready.is_set(),
            "busy": self._in_flight,
            "port": self._port,
            "pid": self._proc.pid
            if self._proc is not None and self._proc.returncode is None
            else None,
            "restarts": self.restarts,
            "problem": self.problem,
        }
