"""The functions one replica runs: each declared function's runtime, output and counts.

Functions are declared in the `functions:` section of the config file the functions service
is started with, never in the route store: applying routes cannot make a host run new code
(docs/functions.md, "Trust"). A change of a function's declaration takes a restart of the
service. A function that cannot be set up (an unknown `run_as` user, a vCenter password
its service's environment lacks) is reported and its routes' events wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vebus.config import (
    Config,
    FunctionConfig,
    FunctionVCenterAccount,
    VCenterEndpoint,
    env_references,
    is_unresolved,
)
from vebus.errors import ConfigError
from vebus_functions.command_runtime import CommandRuntime
from vebus_functions.http_runtime import HttpRuntime
from vebus_functions.output import FunctionOutput, OutputLine, Publisher
from vebus_functions.process import Spawner
from vebus_functions.python_runtime import PythonRuntime
from vebus_functions.runtime import Runtime
from vebus_functions.stats import FunctionStats

__all__ = ["Function", "FunctionHost", "vcenter_endpoints"]

log = logging.getLogger(__name__)


class Function:
    """One declared function in this replica."""

    def __init__(self, config: FunctionConfig, output: FunctionOutput) -> None:
        self.config = config
        self.name = config.name
        self.output = output
        self.stats = FunctionStats(config.name, config.runtime)
        self.runtime: Runtime | None = None
        #: why it cannot run here (None: it can)
        self.problem: str | None = None

    def state(self) -> dict[str, Any]:
        if self.runtime is None:
            return {"problem": self.problem, "busy": 0, "restarts": 0}
        return self.runtime.state()


def vcenter_endpoints(function: FunctionConfig, config: Config) -> dict[str, VCenterEndpoint]:
    """How `function`'s workers log in to each vCenter of `vcenters:` (none without
    `vcenter:`); ConfigError when a password is a variable this process lacks."""
    if function.vcenter is False:
        return {}
    out = {}
    for vc in config.vcenters:
        account = function.vcenter if isinstance(function.vcenter, FunctionVCenterAccount) else vc
        for name in ("username", "password"):
            value = getattr(account, name)
            if value and is_unresolved(value):
                refs = ", ".join(f"${{{n}}}" for n, _ in env_references(value))
                where = f"functions[{function.name}].vcenter" if account is not vc else (
                    f"vcenters[{vc.name}]")  # fmt: skip
                raise ConfigError(
                    [f"function {function.name}: {where}.{name} references {refs}, which the "
                     "functions service's environment does not set"]
                )  # fmt: skip
        out[vc.name] = VCenterEndpoint(
            url=vc.url,
            username=account.username,
            password=account.password,
            password_file=account.password_file,
            ca_file=vc.ca_file,
            insecure=vc.insecure,
        )
    return out


class FunctionHost:
    """Every function of the config, set up in this process."""

    def __init__(
        self,
        config: Config,
        *,
        base_dir: Path,
        publisher: Callable[[str], Publisher | None] | None = None,
        echo: Callable[[str, OutputLine], None] | None = None,
        log_lines: bool = True,
        python: str | None = None,
    ) -> None:
        self.config = config
        self.functions: dict[str, Function] = {}
        for fn in config.functions:
            output = FunctionOutput(
                fn.name,
                secrets=fn.secrets.values(),
                publish=publisher(fn.name) if publisher else None,
                echo=_bound(echo, fn.name) if echo else None,
                log_lines=log_lines,
            )
            function = Function(fn, output)
            self.functions[fn.name] = function
            try:
                function.runtime = self._runtime(fn, base_dir, output, python)
            except ConfigError as e:
                function.problem = "; ".join(e.errors)
                log.error("function %s cannot run here: %s", fn.name, function.problem)

    def _runtime(
        self, fn: FunctionConfig, base_dir: Path, output: FunctionOutput, python: str | None
    ) -> Runtime:
        workdir = (base_dir / fn.workdir) if fn.workdir else base_dir
        where = f"functions[{fn.name}]"
        if not workdir.is_dir():
            raise ConfigError([f"{where}.workdir: {workdir} is not a folder"])
        spawner = Spawner(fn, workdir.resolve(), fn.secrets, where)
        if fn.python is not None:
            kwargs: dict[str, Any] = {"python": python} if python else {}
            return PythonRuntime(
                fn, spawner, output, vcenters=vcenter_endpoints(fn, self.config), **kwargs
            )
        if fn.command is not None:
            return CommandRuntime(fn, spawner, output)
        return HttpRuntime(fn, spawner, output)

    def get(self, name: str) -> Function | None:
        return self.functions.get(name)

    def names(self) -> list[str]:
        return sorted(self.functions)

    async def start(self) -> None:
        """Start every function's processes (a function that fails to start is reported,
        not fatal: its events wait or become dead letters by their route's policy)."""
        runtimes = [f.runtime for f in self.functions.values() if f.runtime is not None]
        await asyncio.gather(*(r.start() for r in runtimes))
        for f in self.functions.values():
            log.info("function %s (%s): %s", f.name, f.config.runtime,
                     f.problem or _describe(f.state()))  # fmt: skip

    async def close(self) -> None:
        runtimes = [f.runtime for f in self.functions.values() if f.runtime is not None]
        await asyncio.gather(*(r.close() for r in runtimes), return_exceptions=True)

    def details(self) -> dict[str, Any]:
        """Each function's counts and processes (/readyz, `vebus status`, `vebus fn list`)."""
        return {
            name: f.stats.snapshot({**f.state(), **({"problem": f.problem} if f.problem else {})})
            for name, f in self.functions.items()
        }

    def state_of(self, name: str) -> Mapping[str, Any]:
        f = self.functions.get(name)
        return f.state() if f is not None else {}

    def dropped_of(self, name: str) -> int:
        f = self.functions.get(name)
        return f.output.dropped if f is not None else 0


def _bound(echo: Callable[[str, OutputLine], None], name: str) -> Callable[[OutputLine], None]:
    def one(line: OutputLine) -> None:
        echo(name, line)

    return one


def _describe(state: Mapping[str, Any]) -> str:
    if state.get("problem"):
        return f"not ready: {state['problem']}"
    if "ready" in state and isinstance(state["ready"], bool):
        return "server ready" if state["ready"] else "server starting"
    if "pids" in state:
        return f"{len(state['pids'])} worker(s) ready"
    return f"up to {state.get('workers')} at once"
