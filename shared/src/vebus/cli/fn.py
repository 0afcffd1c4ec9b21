"""`vebus fn`: write, try and watch functions (docs/functions.md).

`new` writes files from templates; `test` runs one invocation through the functions
package's own runner (`python -m vebus_functions.invoke`, a process of its own: the
command does not import a service); `list` and `logs` ask the running functions replicas
over NATS (their micro-service stats and `vebus.control.functions.logs`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from vebus import names
from vebus.bus.status import merge_quantile
from vebus.cli._common import config_option, fail, load_or_default, nats_url_option, run_async

__all__ = ["fn", "merge_quantile"]

#: exit status for bad input (as the other commands)
INVALID = 2


@click.group()
def fn() -> None:
    """Functions: your code, run by the functions service on the events of a route.

    \b
      vebus fn new NAME                      a handler, a sample event, a test, the config
      vebus fn test NAME --event FILE        run it once here, as the service would
      vebus fn list                          functions, replicas, invocations, errors, p50/p99
      vebus fn logs NAME [-f]                what a function printed (and prints)
    """


# ---------------------------------------------------------------------------- new

_HANDLER = '''"""Function {name}: runs on each event of the routes that name it.

`event`: the CloudEvent (`event.type`, `event.id`, `event.data` as decoded JSON).
`ctx`: `ctx.log`, `ctx.secrets`, `ctx.vcenter` (pyvmomi, with `vcenter: true`),
`ctx.object(ref)`, `ctx.tags`, `ctx.request(...)`, `ctx.reply(...)`. See docs/functions.md.
"""

from vebus_functions import Reject, RetryLater  # noqa: F401 - raise them to choose the outcome


def handle(event, ctx):
    vm = (event.data or {{}}).get("Vm") or {{}}
    ctx.log.info("%s: %s", event.type, vm.get("Name", "-"))
    # return a dict to publish a reply event (routed like any other), or None
    return {{"seen": event.id, "vm": vm.get("Name")}}
'''

_TEST = '''"""Runs function {name} once on event.json, as the functions service would."""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_{ident}_replies_with_the_vm() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "vebus_functions.invoke", "{name}", "--event",
         str(HERE / "event.json"), "--json", "--config", str(HERE.parent.parent / "vebus.yaml")],
        capture_output=True, text=True, cwd=HERE.parent.parent, timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "done"
    assert result["replies"][0]["data"]["vm"] == "test-01"
'''

_EVENT = {
    "specversion": "1.0",
    "id": "9902",
    "source": "https://vc01.example.com/sdk",
    "type": "com.vmware.vsphere.VmPoweredOnEvent.v0",
    "subject": "VmPoweredOnEvent",
    "time": "2025-01-01T12:00:00.000Z",
    "datacontenttype": "application/json",
    "eventclass": "event",
    "data": {
        "Key": 9902,
        "ChainId": 9902,
        "CreatedTime": "2025-01-01T12:00:00.000Z",
        "UserName": "VSPHERE.LOCAL\\Administrator",
        "Datacenter": {"Name": "DC0",
                       "Datacenter": {"Type": "Datacenter", "Value": "datacenter-2"}},
        "ComputeResource": {"Name": "DC0_C0", "ComputeResource": {
            "Type": "ClusterComputeResource", "Value": "domain-c7"}},
        "Host": {"Name": "DC0_C0_H0", "Host": {"Type": "HostSystem", "Value": "host-21"}},
        "Vm": {"Name": "test-01", "Vm": {"Type": "VirtualMachine", "Value": "vm-56"}},
        "FullFormattedMessage": "test-01 on DC0_C0_H0 in DC0 is powered on",
    },
}  # fmt: skip

_SNIPPET = """\
# add to vebus.yaml (the functions service reads `functions:`; routes name a function):
functions:
  - name: {name}
    python: functions/{name}/handler.py:handle
    timeout: 30s
routes:
  - name: {name}
    match: {{type: [com.vmware.vsphere.VmPoweredOnEvent.v0]}}
    sink: {{kind: function, function: {name}}}
    delivery: {{max_attempts: 5}}"""


@fn.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default="functions",
    show_default=True,
    help="Where the function's folder goes.",
)
def new(name: str, folder: str) -> None:
    """Write a new Python function NAME: handler, sample event, test, and its config.

    Creates FOLDER/NAME/handler.py, event.json (a VmPoweredOnEvent) and test_handler.py,
    and prints the `functions:` entry and a route for vebus.yaml. Try it at once, with
    or without that entry: `vebus fn test NAME --event functions/NAME/event.json`.
    """
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        fail(f"function name {name!r} may use only letters, digits, '_' and '-'", INVALID)
    where = Path(folder) / name
    if where.exists():
        fail(f"{where} exists already: pick another name or remove it", INVALID)
    where.mkdir(parents=True)
    (where / "handler.py").write_text(_HANDLER.format(name=name), encoding="utf-8")
    (where / "event.json").write_text(json.dumps(_EVENT, indent=2) + "\n", encoding="utf-8")
    ident = re.sub(r"\W", "_", name)
    (where / "test_handler.py").write_text(_TEST.format(name=name, ident=ident), encoding="utf-8")
    click.echo(f"wrote {where}/handler.py, {where}/event.json, {where}/test_handler.py")
    click.echo(f"try it:  vebus fn test {name} --event {where}/event.json")
    click.echo("")
    click.echo(_SNIPPET.format(name=name))


# ---------------------------------------------------------------------------- test


@fn.command("test", context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.option(
    "--event",
    "event_file",
    required=True,
    help="A CloudEvent in the JSON format (e.g. from `vebus tail --json`), or -.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def test(name: str, event_file: str, as_json: bool, config_path: str) -> None:
    """Run function NAME once on an event, here, as the functions service would.

    The function is the one the config's `functions:` declares (or
    functions/NAME/handler.py, as `vebus fn new` writes it). It runs in a worker process
    with its own environment and secrets; nothing is published. Prints its output, the
    result and each reply event.

    \b
    Exit status: 0 done, 1 failed (it raised, timed out, crashed or does not load),
    2 bad input, 3 it asked to be retried later, 4 it rejected the event.
    """
    if importlib.util.find_spec("vebus_functions") is None:
        fail("vebus fn test needs the vebus-functions package (uv sync --all-packages)", 1)
    args = [sys.executable, "-m", "vebus_functions.invoke", name, "--event", event_file,
            "--config", config_path]  # fmt: skip
    if as_json:
        args.append("--json")
    sys.exit(subprocess.call(args))


# ---------------------------------------------------------------------------- list


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


async def _functions(config: Any, nats_url: str | None) -> dict[str, dict[str, Any]]:
    from vebus.bus.status import discover, function_summary
    from vebus.cli._common import nats_connection

    async with nats_connection(config, nats_url) as nc:
        return function_summary(await discover(nc))


@fn.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
@nats_url_option
def list_functions(as_json: bool, config_path: str, nats_url: str | None) -> None:
    """The functions the running functions replicas declare: replicas, invocations,
    errors (anything but done), p50 and p99 duration, and problems.

    Counts are since each replica started (its /metrics has them as
    vebus_function_*).
    """
    config = load_or_default(config_path)
    found = run_async(_functions, config, nats_url)
    if as_json:
        click.echo(json.dumps(sorted(found.values(), key=lambda f: f["function"]), indent=2))
        return
    if not found:
        click.echo("no functions replica is running (or none declares a function)")
        return
    click.echo(f"{'FUNCTION':<24} {'RUNTIME':<8} {'REPLICAS':>8} {'INVOKED':>8} {'ERRORS':>7} "
               f"{'P50':>10} {'P99':>10}")  # fmt: skip
    for name in sorted(found):
        f = found[name]
        click.echo(
            f"{name:<24} {f['runtime'] or '?':<8} {f['replicas']:>8} {f['invocations']:>8} "
            f"{f['errors']:>7} {_ms(f['p50']):>10} {_ms(f['p99']):>10}"
        )
        for problem in f["problems"]:
            click.echo(f"  problem: {problem}")
        if f["last_error"] and f["errors"]:
            click.echo(f"  last error: {f['last_error']}")


# ---------------------------------------------------------------------------- logs


def _line(instance: str, at: float, pid: int, text: str) -> str:
    when = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{when} {instance}[{pid}] {text}"


@fn.command("logs")
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True,
              help="Recent lines to show from each replica.")  # fmt: skip
@click.option("-f", "--follow", is_flag=True, help="Then print new lines as they come.")
@config_option
@nats_url_option
def logs(name: str, lines: int, follow: bool, config_path: str, nats_url: str | None) -> None:
    """What function NAME printed: the recent lines each functions replica keeps, then
    (--follow) new ones live, until Ctrl-C.

    Lines are the function's standard output and error, secrets masked (`***`), at most
    200 a second per replica (the rest are counted as dropped). The live view is
    at-most-once: a line printed while nothing listens is only in the replicas' recent lines.
    """
    config = load_or_default(config_path)
    sys.exit(run_async(_logs, config, nats_url, name, lines, follow))


async def _logs(config: Any, nats_url: str | None, name: str, lines: int, follow: bool) -> int:
    import asyncio

    from vebus.bus.control import gather
    from vebus.cli._common import nats_connection

    async with nats_connection(config, nats_url) as nc:
        live: asyncio.Queue[bytes] = asyncio.Queue()
        sub = None
        if follow:  # before asking for the recent lines: none is missed in between

            async def on_line(msg: Any) -> None:
                live.put_nowait(msg.data)

            sub = await nc.subscribe(names.function_logs_subject(name), cb=on_line)
        request = json.dumps({"function": name, "lines": lines}).encode()
        answers = []
        for data in await gather(nc, names.FUNCTION_LOGS_SUBJECT, 1.0, request):
            try:
                answers.append(json.loads(data))
            except ValueError:
                continue
        if not answers and not follow:
            fail(f"no running functions replica declares a function named {name!r}", INVALID)
        recent = sorted(
            (at, a.get("instance", "?"), pid, text)
            for a in answers
            for at, pid, text in a.get("lines") or []
        )
        last = recent[-1][0] if recent else 0.0
        for at, instance, pid, text in recent:
            click.echo(_line(instance, at, pid, text))
        if not follow:
            return 0
        try:
            while True:
                data = await live.get()
                try:
                    at, pid, text = json.loads(data)
                except ValueError:
                    continue
                if at > last:
                    click.echo(_line("live", at, pid, text))
        except asyncio.CancelledError:
            return 0
        finally:
            if sub is not None:
                await sub.unsubscribe()
