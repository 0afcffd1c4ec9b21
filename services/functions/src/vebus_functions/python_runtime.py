"""The python runtime: a pool of worker processes per function.

`workers` processes run `python -m vebus_functions.worker` (vebus_functions.worker), each
loading the function once and running one invocation at a time; an invocation waits for
a free worker. What the service does with a worker:

| the worker                                   | the service                                  |
|----------------------------------------------|----------------------------------------------|
| answers                                      | the outcome it says; the worker is free      |
| runs past the function's `timeout`           | kills it (its process group): `timeout`      |
| is still busy when the route's timeout ends  | kills it; the route records TIMEOUT          |
| dies during an invocation (a signal, its     | `crashed`: no outcome (the event comes again |
| own exit, `memory_mb`, the OOM killer)       | and ends POISON if it never gets one)        |
| grows past `memory_mb` while busy / idle     | kills it / replaces it                       |
| cannot load the function                     | `unavailable` until a new worker can          |

A worker that dies or is killed is replaced at once; one that keeps dying is replaced after
a growing delay (vebus_functions.runtime.RestartBackoff).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from typing import Any

import msgspec

from vebus.bus.cloudevent import CloudEvent
from vebus.config import FunctionConfig, VCenterEndpoint
from vebus_functions import protocol
from vebus_functions.output import TAIL_LINES, FunctionOutput
from vebus_functions.process import Spawner, kill_group, rss_bytes
from vebus_functions.runtime import Call, Outcome, RestartBackoff, describe_exit

__all__ = ["PythonRuntime"]

log = logging.getLogger(__name__)

#: how long a new worker may take to load the function
START_TIMEOUT = 60.0
#: how often busy workers' memory is looked at (with `memory_mb`)
MEMORY_CHECK = 0.5
#: how long a worker told to stop may take before it is killed
STOP_GRACE = 5.0


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.busy = False
        #: why the service killed it, if it did
        self.killed_for: str | None = None
        self.output: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and self.killed_for is None

    async def send(self, message: protocol.Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(message))
        await self.proc.stdin.drain()

    async def receive(self) -> protocol.Message | None:
        """The next message, or None when the worker has closed its end (it died)."""
        assert self.proc.stdout is not None
        try:
            header = await self.proc.stdout.readexactly(protocol.HEADER.size)
            body = await self.proc.stdout.readexactly(protocol.frame_length(header))
            return protocol.decode(body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            return None

    def kill(self, why: str) -> None:
        if self.killed_for is None:
            self.killed_for = why
        kill_group(self.proc)

    def tail_text(self) -> str:
        return "\n".join(self.tail)


class PythonRuntime:
    """A function's pool of Python worker processes (see the module docstring)."""

    def __init__(
        self,
        function: FunctionConfig,
        spawner: Spawner,
        output: FunctionOutput,
        *,
        vcenters: dict[str, VCenterEndpoint] | None = None,
        python: str = sys.executable,
    ) -> None:
        assert function.python is not None
        self.function = function
        self._spawner = spawner
        self._output = output
        self._init = protocol.Init(
            function=function.name,
            target=function.python,
            workdir=str(spawner.workdir),
            secrets=sorted(function.secrets),
            vcenters=dict(vcenters or {}),
        )
        self._python = python
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._starting = 0
        self._closing = False
        self._backoff = RestartBackoff()
        self._seq = 0
        self.restarts = 0
        #: the last reason a worker could not load the function (cleared when one can)
        self.load_error: tuple[str, str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._memory_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- workers

    async def start(self) -> None:
        await asyncio.gather(*(self._start_one() for _ in range(self.function.workers)))
        if self.function.memory_mb is not None:
            self._memory_task = asyncio.create_task(self._watch_memory())

    async def _start_one(self, delay: float = 0.0) -> None:
        """Start a worker (after `delay`) and make it free once it loaded the function."""
        if delay:
            await asyncio.sleep(delay)
        if self._closing:
            return
        self._starting += 1
        try:
            proc = await self._spawner.spawn(
                [self._python, "-m", "vebus_functions.worker"],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            worker = _Worker(proc)
            assert proc.stderr is not None
            worker.output = self._spawn(self._output.pump(proc.stderr, proc.pid, worker.tail))
            self._workers.add(worker)
            worker.watch = self._spawn(self._watch(worker))
            try:
                await worker.send(self._init)
                async with asyncio.timeout(START_TIMEOUT):
                    first = await worker.receive()
            except (TimeoutError, ConnectionError) as e:
                worker.kill(f"did not start: {e!r}")
                return
            if isinstance(first, protocol.Ready):
                if self.load_error is not None:
                    log.info("function %s: a worker loaded it again", self.function.name)
                self.load_error = None
                self._idle.put_nowait(worker)
            elif isinstance(first, protocol.InitFailed):
                self.load_error = (first.error, first.detail)
                log.error("function %s: cannot load %s: %s",
                          self.function.name, self.function.python, first.error)  # fmt: skip
                worker.kill("could not load the function")
            else:
                await asyncio.sleep(0.05)  # its exit status, if it is exiting
                self.load_error = (
                    f"its worker (pid {worker.pid}) ended at start: "
                    f"{describe_exit(proc.returncode)}", worker.tail_text(),
                )  # fmt: skip
                worker.kill("ended at start")
        except OSError as e:  # the interpreter cannot be started at all
            self.load_error = (f"cannot start a worker: {e}", "")
            log.error("function %s: cannot start a worker: %s", self.function.name, e)
            self._spawn(self._start_one(self._backoff.failed()))
        finally:
            self._starting -= 1

    async def _watch(self, worker: _Worker) -> None:
        """Replace `worker` once it has exited (unless the pool is closing)."""
        await worker.proc.wait()
        self._workers.discard(worker)
        if worker.output is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(worker.output), 1.0)
        if self._closing:
            return
        if worker.killed_for is None:
            log.warning("function %s: worker %d ended: %s", self.function.name, worker.pid,
                        describe_exit(worker.proc.returncode))  # fmt: skip
        self.restarts += 1
        delay = 0.0 if worker.killed_for == "replaced" else self._backoff.failed()
        self._spawn(self._start_one(delay))

    async def _watch_memory(self) -> None:
        cap = (self.function.memory_mb or 0) * 1024 * 1024
        while not self._closing:
            await asyncio.sleep(MEMORY_CHECK)
            for worker in list(self._workers):
                rss = rss_bytes(worker.pid) if worker.busy else None
                if rss is not None and rss > cap and worker.alive:
                    log.warning("function %s: worker %d uses %d MiB, over memory_mb %d: killed",
                                self.function.name, worker.pid, rss >> 20,
                                self.function.memory_mb)  # fmt: skip
                    worker.kill(f"its memory ({rss >> 20} MiB) went over memory_mb "
                                f"({self.function.memory_mb})")  # fmt: skip

    def _release(self, worker: _Worker) -> None:
        """A worker is free again: back to the pool, or replaced when it grew too big."""
        worker.busy = False
        cap = self.function.memory_mb
        if cap is not None:
            rss = rss_bytes(worker.pid)
            if rss is not None and rss > cap * 1024 * 1024:
                log.info("function %s: worker %d uses %d MiB, over memory_mb %d: replaced",
                         self.function.name, worker.pid, rss >> 20, cap)  # fmt: skip
                worker.kill("replaced")
                return
        if worker.alive:
            self._idle.put_nowait(worker)

    # ---------------------------------------------------------------- invocations

    async def _free_worker(self) -> _Worker | None:
        """The next free, live worker; None when the function cannot be loaded and no
        worker is about to be free."""
        while True:
            if self._idle.empty() and self.load_error is not None:
                busy = any(w.busy and w.alive for w in self._workers)
                if not busy and not self._starting:
                    return None
            try:
                worker = await asyncio.wait_for(self._idle.get(), 1.0 if self.load_error else None)
            except TimeoutError:
                continue
            if worker.alive:
                return worker

    async def invoke(self, event: CloudEvent, call: Call) -> Outcome:
        worker = await self._free_worker()
        if worker is None:
            assert self.load_error is not None
            error, detail = self.load_error
            return Outcome(status="unavailable", message=f"cannot load {self.function.python}: "
                           f"{error}", detail=detail or None)  # fmt: skip
        worker.busy = True
        self._seq += 1
        seq = self._seq
        started = time.monotonic()
        timeout = self.function.timeout
        try:
            await worker.send(
                protocol.Invoke(
                    seq=seq,
                    event=event,
                    route=call.route,
                    vcenter=call.vcenter,
                    traceparent=call.traceparent,
                )
            )
            async with asyncio.timeout(float(timeout) if timeout is not None else None):
                answer = await worker.receive()
        except TimeoutError:
            worker.kill("timeout")
            return Outcome(
                status="timeout",
                message=f"function {self.function.name} ran past its timeout of "
                f"{float(timeout or 0):g}s: its worker (pid {worker.pid}) was killed",
                detail=worker.tail_text() or None,
                duration=time.monotonic() - started,
            )
        except asyncio.CancelledError:
            worker.kill("cancelled")  # the route's timeout: nothing else may reuse it
            raise
        except ConnectionError:
            answer = None
        duration = time.monotonic() - started
        if not isinstance(answer, protocol.Result) or answer.seq != seq:
            return await self._crashed(worker, duration)
        self._backoff.succeeded()
        self._release(worker)
        return Outcome(
            status=answer.status,
            message=answer.message,
            detail=answer.detail,
            retry_after=answer.retry_after,
            replies=answer.replies,
            duration=duration,
        )

    async def _crashed(self, worker: _Worker, duration: float) -> Outcome:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.proc.wait(), 2.0)
        if worker.output is not None:  # its last words, for the tail
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(worker.output), 1.0)
        why = worker.killed_for or describe_exit(worker.proc.returncode)
        if worker.proc.returncode is None:
            worker.kill("no answer")
        return Outcome(
            status="crashed",
            message=f"its worker (pid {worker.pid}) died during the invocation: {why}",
            detail=worker.tail_text() or None,
            duration=duration,
        )

    # ---------------------------------------------------------------- the rest

    async def close(self) -> None:
        self._closing = True
        if self._memory_task is not None:
            self._memory_task.cancel()
        for worker in list(self._workers):
            if worker.proc.stdin is not None and not worker.busy:
                worker.proc.stdin.close()  # a free worker stops on its own
            else:
                worker.kill("stopping")
        procs = [w.proc.wait() for w in self._workers]
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p) for p in procs], timeout=STOP_GRACE
            )
            for task in pending:
                task.cancel()
        for worker in list(self._workers):
            worker.kill("stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def state(self) -> dict[str, Any]:
        busy = sum(1 for w in self._workers if w.busy and w.alive)
        return {
            "workers": self.function.workers,
            "ready": self._idle.qsize(),
            "busy": busy,
            "starting": self._starting,
            "restarts": self.restarts,
            "problem": self.load_error[0] if self.load_error else None,
            "pids": sorted(w.pid for w in self._workers if w.alive),
        }

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
