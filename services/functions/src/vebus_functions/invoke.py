"""One local invocation of a function, as the service would run it: `vebus fn test`.

    python -m vebus_functions.invoke NAME --event FILE [--config vebus.yaml] [--json]

The function is the one `functions:` of the config declares, or, when it declares none of
that name, `functions/NAME/handler.py:handle` (what `vebus fn new NAME` writes) with the
defaults. It runs in a worker process exactly as in the service (clean environment, its
secrets, its `timeout`), once, on the event of FILE (a CloudEvent in the JSON format);
nothing is published. It prints the function's output as it comes (on stderr, prefixed
`| `), then the result and each reply event; `--json` prints one JSON object instead.

Exit status: 0 done, 1 failed (raised, timed out, crashed, cannot load: retried in the
service), 2 bad input (no such function, an unreadable event), 3 asked to retry later,
4 rejected (a dead letter in the service).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from vebus import names
from vebus.bus.cloudevent import CloudEvent
from vebus.bus.http import from_json, to_json
from vebus.config import Config, FunctionConfig, load_config
from vebus.errors import ConfigError, InvalidEventError
from vebus_functions.host import FunctionHost
from vebus_functions.output import OutputLine
from vebus_functions.replies import build_reply, hops_of
from vebus_functions.runtime import Call
from vebus_functions.sink import vcenter_of

__all__ = ["EXIT", "main"]

#: the exit status of each outcome
EXIT = {
    "done": 0, "error": 1, "timeout": 1, "crashed": 1, "unavailable": 1, "retry": 3, "reject": 4,
}  # fmt: skip
BAD_INPUT = 2


def _function(config: Config, name: str, base: Path) -> FunctionConfig | None:
    declared = config.function(name)
    if declared is not None:
        return declared
    scaffold = base / "functions" / name / "handler.py"
    if scaffold.is_file():
        return FunctionConfig(name=name, python=f"functions/{name}/handler.py:handle", workers=1)
    return None


def _echo(_: str, line: OutputLine) -> None:
    print(f"| {line.text}", file=sys.stderr, flush=True)


def _read_event(event_file: str) -> CloudEvent:
    text = sys.stdin.read() if event_file == "-" else Path(event_file).read_text(encoding="utf-8")
    try:
        return from_json(text)
    except InvalidEventError as e:
        raise InvalidEventError(f"{'stdin' if event_file == '-' else event_file}: {e}") from None


async def _invoke(
    config: Config, fn: FunctionConfig, base: Path, event: CloudEvent
) -> dict[str, Any]:
    single = Config(vcenters=config.vcenters, functions=[fn])
    host = FunctionHost(single, base_dir=base, echo=_echo, log_lines=False)
    function = host.get(fn.name)
    assert function is not None
    if function.runtime is None:
        raise ConfigError([function.problem or f"function {fn.name} cannot run here"])
    try:
        await host.start()
        call = Call(route="fn-test", vcenter=vcenter_of(event, {}, config))
        outcome = await function.runtime.invoke(event, call)
        await asyncio.sleep(0.1)  # the last lines of its output
    finally:
        await host.close()
    replies = []
    for i, raw in enumerate(outcome.replies):
        try:
            reply = build_reply(raw, function=fn.name, msg_id=f"fn-test:{event.id}:{i}",
                                hops=hops_of(event) + 1)  # fmt: skip
        except InvalidEventError as e:
            duration = round(outcome.duration * 1000, 1)
            return {"status": "error", "message": str(e), "replies": [], "detail": None,
                    "duration_ms": duration, "function": fn.name}  # fmt: skip
        replies.append(json.loads(to_json(reply)))
    return {
        "function": fn.name,
        "runtime": fn.runtime,
        "status": outcome.status,
        "message": outcome.message,
        "detail": outcome.detail,
        "retry_after": outcome.retry_after,
        "duration_ms": round(outcome.duration * 1000, 1),
        "replies": replies,
    }


def _print(result: dict[str, Any]) -> None:
    line = f"function {result['function']}: {result['status']} in {result['duration_ms']:g} ms"
    if result.get("message"):
        line += f": {result['message']}"
    print(line)
    if result.get("retry_after") is not None:
        print(f"  retry after {result['retry_after']:g} s")
    if result.get("detail") and result["status"] != "done":
        for text in str(result["detail"]).rstrip("\n").splitlines():
            print(f"  {text}")
    for i, reply in enumerate(result.get("replies") or []):
        print(f"reply {i + 1}:")
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if result["status"] == "done" and not result.get("replies"):
        print("no reply")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vebus fn test", description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--event", required=True, help="a CloudEvent in the JSON format, or -")
    p.add_argument("--config", default=os.environ.get(names.ENV_CONFIG, "vebus.yaml"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    config_path = Path(a.config)
    try:
        config = load_config(config_path, service="functions") if config_path.exists() else (
            Config()
        )  # fmt: skip
    except ConfigError as e:
        for err in e.errors:
            print(f"vebus: {config_path}: {err}", file=sys.stderr)
        return BAD_INPUT
    base = config_path.resolve().parent if config_path.exists() else Path.cwd()
    fn = _function(config, a.name, base)
    if fn is None:
        known = ", ".join(f.name for f in config.functions) or "none"
        print(f"vebus: no function named {a.name!r} (declared in {config_path}: {known}; nor "
              f"functions/{a.name}/handler.py)", file=sys.stderr)  # fmt: skip
        return BAD_INPUT
    try:
        result = asyncio.run(_invoke(config, fn, base, _read_event(a.event)))
    except (InvalidEventError, ConfigError) as e:
        errors = e.errors if isinstance(e, ConfigError) else [str(e)]
        for err in errors:
            print(f"vebus: {err}", file=sys.stderr)
        return BAD_INPUT
    except OSError as e:
        print(f"vebus: {a.event}: cannot read the event file: {e.strerror}", file=sys.stderr)
        return BAD_INPUT
    if a.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        _print(result)
    return EXIT.get(str(result["status"]), 1)


if __name__ == "__main__":
    sys.exit(main())
