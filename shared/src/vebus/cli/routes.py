"""`vebus routes`: test a pattern; apply, list, pause and resume the running routes.

`apply`, `pause` and `resume` change the route set stored in NATS KV (routestore.py)
and then wait until every running filter and dispatcher replica reports the change, so
that when they return the change is in force everywhere (or they say where it is not).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from vebus import names
from vebus.bus.http import from_json
from vebus.cli._common import (
    config_option,
    echo_config_errors,
    fail,
    load_or_default,
    nats_connection,
    nats_url_option,
    run_async,
)
from vebus.errors import InvalidEventError, PatternError
from vebus.events.patterns import Pattern, compile_pattern, explain_match

__all__ = ["routes"]

#: exit statuses of `vebus routes test`
MATCHED, NOT_MATCHED, INVALID = 0, 1, 2


@click.group()
def routes() -> None:
    """Work with routes: test a pattern, change the running routes, pause a route.

    \b
    Routes live in NATS KV once applied; until then every service runs its config
    file's routes. `vebus up` applies its config file's routes when it starts.
    \b
      vebus routes test --route NAME --event FILE   does the route match this event?
      vebus routes apply vebus.yaml                 change the running routes, no restart
      vebus routes list                             what is stored, its revision, pauses
      vebus routes pause NAME / resume NAME         hold a route's events (sink maintenance)
    """


def _read(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"{file}: cannot read the event file: {e.strerror}", INVALID)
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text: save the event file as UTF-8", INVALID)


def _route_pattern(config_path: str, name: str) -> tuple[str, Pattern | None]:
    """The pattern of route `name` in the config file (None: the route takes every event).

    Only that route's `match` is read (and its ${ENV} references resolved): testing a
    pattern does not need the sinks' secrets. `vebus config check` validates the rest.
    """
    # the loader's own ${ENV} rules (_resolve_env), for `match` only
    from vebus.config import _resolve_env, read_yaml
    from vebus.errors import ConfigError

    try:
        raw = read_yaml(config_path)
    except ConfigError as e:  # cannot read it, not UTF-8, not YAML: one line naming the file
        fail(e.errors[0], INVALID)
    entries = raw.get("routes") if isinstance(raw, dict) else None
    names: list[str] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        names.append(str(entry.get("name")))
        if entry.get("name") != name:
            continue
        path = f"routes[{index}].match"
        errors: list[str] = []
        match = _resolve_env(entry.get("match") or {}, path, os.environ, errors)
        if errors:
            fail(f"{config_path}: {errors[0]}", INVALID)
        if not match:
            return path, None
        try:
            return path, compile_pattern(match, path=path)
        except PatternError as e:
            fail(f"{config_path}: {e}", INVALID)
    known = ", ".join(names) or "none"
    fail(f"{config_path}: no route named {name!r} (routes: {known})", INVALID)


@routes.command("test")
@click.option("--route", "route_name", help="A route of the config file, by name.")
@click.option("--pattern", "pattern_json", help="A pattern as JSON, instead of --route.")
@click.option(
    "--event",
    "event_file",
    required=True,
    help="A CloudEvent in JSON (structured mode), as `vebus tail --json` prints it: "
    "a file, or - for standard input.",
)
@config_option
def test(
    route_name: str | None, pattern_json: str | None, event_file: str, config_path: str
) -> None:
    """Match one event against a route's pattern (or --pattern) and say why.

    Prints "matched" or "no match" and the field that decided it, as the filter would
    decide. The event is a CloudEvent in JSON (the JSON event format, structured mode),
    as `vebus tail --json` prints it. Exit status: 0 matched, 1 no match, 2 invalid
    pattern, event or route.

    \b
    Examples:
      vebus routes test --route vm-off-to-slack --event event.json
      vebus routes test --pattern '{"type": [{"prefix": "com.vmware.vsphere.Vm"}]}' --event -
      vebus tail --json --count 1 | vebus routes test --route vm-off-to-slack --event -
    """
    if (route_name is None) == (pattern_json is None):
        raise click.UsageError("give exactly one of --route NAME or --pattern JSON")
    label: str
    pattern: Pattern | None
    if pattern_json is not None:
        try:
            raw = json.loads(pattern_json)
        except json.JSONDecodeError as e:
            fail(f"--pattern: not valid JSON: {e}", INVALID)
        try:
            pattern = compile_pattern(raw, path="pattern")
        except PatternError as e:
            fail(f"--pattern: {e}", INVALID)
        label = "pattern"
    else:
        assert route_name is not None
        _, pattern = _route_pattern(config_path, route_name)
        label = f"route {route_name}"
    where = "stdin" if event_file == "-" else event_file
    try:
        doc = from_json(_read(event_file)).as_match_input()
    except InvalidEventError as e:
        fail(f"{where}: {e}", INVALID)
    explanation = explain_match(pattern, doc)
    for line in explanation.lines(label):
        click.echo(line)
    sys.exit(MATCHED if explanation.matched else NOT_MATCHED)


# ---------------------------------------------------------------- live route changes

#: exit statuses of apply / pause / resume (INVALID = 2 as above: nothing was changed)
APPLIED, NOT_EVERYWHERE = 0, 1
#: how long one discovery round waits for answers
ROUND = 0.75

timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for every filter, dispatcher and functions replica to report it.",
)


def _read_routes_file(file: str) -> list[Any]:
    """The validated `routes:` list of FILE, as written; exit 2 naming every problem."""
    from vebus.errors import ConfigError
    from vebus.routing.store import check_routes

    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"{file}: cannot read the routes file: {e.strerror}", INVALID)
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text: save the file as UTF-8", INVALID)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        fail(f"{file}: not valid YAML{where}: {getattr(e, 'problem', None) or e}", INVALID)
    try:
        return check_routes(raw, file)
    except ConfigError as e:
        echo_config_errors(file, e.errors)
        click.echo(f"vebus: {file}: not applied; the running routes are unchanged", err=True)
        sys.exit(INVALID)


def _has_nats_section(file: str) -> bool:
    try:
        raw = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "nats" in raw


class _Replica:
    def __init__(self, service: str, instance: str) -> None:
        self.service, self.instance = service, instance
        self.status: Any = None  # ReplicaStatus, once it answered
        self.last_seen = 0


async def _wait_for_replicas(nc: Any, done: Any, timeout: float) -> list[_Replica]:
    """Find every replica that runs routes (names.ROUTE_SERVICES) and wait until
    `done(replica)` holds for all.

    Replicas are found with `$SRV.PING` each round, so one that cannot answer the status
    request (an older vebus) is noticed; one that stops answering pings for two rounds
    (it stopped) is no longer waited for. Returns the live replicas, filters first.
    """
    import asyncio
    import time

    from vebus.bus.control import instance_of, ping
    from vebus.routing.source import collect_statuses

    seen: dict[tuple[str, str], _Replica] = {}
    deadline = time.monotonic() + timeout
    round_ = 0
    while True:
        round_ += 1
        asked = asyncio.ensure_future(collect_statuses(nc, ROUND))  # at the same time
        pings = await asyncio.gather(
            *(ping(nc, service, ROUND) for service in names.ROUTE_SERVICES)
        )
        statuses = await asked
        for service, answers in zip(names.ROUTE_SERVICES, pings, strict=True):
            for answer in answers:
                key = (service, instance_of(answer))
                seen.setdefault(key, _Replica(*key)).last_seen = round_
        for status in statuses:
            key = (status.service, status.instance)
            if key in seen:
                seen[key].status = status
        live = [r for r in seen.values() if r.last_seen >= round_ - 1]
        # two rounds at least: a replica busy enough to miss one round's ping is still found
        if (round_ >= 2 and all(done(r) for r in live)) or time.monotonic() >= deadline:
            live.sort(key=lambda r: (r.service != "filter", r.service, r.instance))
            return live


def _replica_line(r: _Replica, problem: str | None) -> str:
    head = f"{r.service:<11} {r.instance:<10}"
    if r.status is None:
        return f"{head} no answer to the routes status request (an older vebus?)"
    text = f"{head} revision {r.status.revision}"
    if r.service in names.DELIVERING_SERVICES:
        text += f", {len(r.status.routes)} route(s) running"
        if r.status.paused:
            text += f", paused: {', '.join(r.status.paused)}"
    return f"{text}  {problem or 'ok'}"


def _missing_text(status: Any) -> str:
    return "; ".join(
        f"lacks ${{{var}}} (route {', '.join(names)})"
        for var, names in sorted(status.missing_env.items())
    )


@routes.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@timeout_option
@config_option
@nats_url_option
def apply(file: str, timeout: float, config_path: str, nats_url: str | None) -> None:
    """Make FILE's routes the running routes of every filter and dispatcher, live.

    FILE is a vebus.yaml, or a file holding only `routes:`. The routes are validated as
    `vebus config check` does (exit 2 naming each problem; nothing is changed), stored
    in NATS KV with their ${ENV} references as written (secrets never go into NATS: each
    dispatcher resolves them from its own environment), and then every running filter
    and dispatcher replica is waited for until it reports the new revision.

    A route with `sink: {kind: function, function: F}` must name a function that the
    running functions replicas declare (or, when none runs, that FILE or --config
    declares in `functions:`); otherwise nothing is stored (exit 2).

    When apply succeeds, every event published after it returned is matched against
    the new routes. Events already routed to a removed route are still delivered.
    NATS settings come from --config; without it, from FILE when FILE has `nats:`.

    \b
    Exit status:
      0  every replica runs the new revision
      1  some replica did not report it within --timeout, lacks a variable a route
         references (that route keeps its previous form there), or could not load it;
         the new routes are stored and the replicas that took them run them
      2  the file is invalid, or a route names an unknown function: nothing was changed
    """
    raw_routes = _read_routes_file(file)
    file_functions = _declared_in(file)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("config_path") is click.core.ParameterSource.DEFAULT and (
        not Path(config_path).exists() or _has_nats_section(file)
    ):
        config_path = file  # a whole vebus.yaml says where NATS is
    config = load_or_default(config_path)
    declared = file_functions | {f.name for f in config.functions}
    status = run_async(
        _apply, config, nats_url, raw_routes, str(Path(file).resolve()), timeout, declared
    )
    sys.exit(status)


def _declared_in(file: str) -> set[str]:
    """The names of the functions FILE's `functions:` declares (validated with the file)."""
    try:
        raw = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    functions = raw.get("functions") if isinstance(raw, dict) else None
    return {str(f.get("name")) for f in functions or [] if isinstance(f, dict)}


async def _running_functions(nc: Any) -> tuple[set[str], int]:
    """The functions every running functions replica declares, and how many replicas
    answered (a replica busy enough to miss one round is asked again)."""
    import asyncio

    from vebus.bus.control import ping
    from vebus.routing.source import collect_statuses

    declared: set[str] = set()
    answered: set[str] = set()
    for _ in range(2):
        statuses, pings = await asyncio.gather(
            collect_statuses(nc, ROUND), ping(nc, "functions", ROUND)
        )
        for s in statuses:
            if s.service == "functions":
                answered.add(s.instance)
                declared |= set(s.functions)
        if len(answered) >= len(pings):
            break
    return declared, len(answered)


async def _unknown_functions(nc: Any, raw_routes: list[Any], declared_here: set[str]) -> int:
    """Exit status 2 (nothing stored) when a route names a function that no running
    functions replica declares (or, when none runs, that the config files do not); 0
    when every function is known."""
    from vebus.routing.store import route_name, sink_kind

    wanted = {
        route_name(raw): str((raw.get("sink") or {}).get("function"))
        for raw in raw_routes
        if isinstance(raw, dict) and sink_kind(raw) == names.FUNCTION_SINK
    }
    if not wanted:
        return APPLIED
    declared, replicas = await _running_functions(nc)
    where = f"the {replicas} running functions replica(s)"
    if not replicas:
        declared = declared_here
        where = "the config (no functions replica is running)"
    unknown = {route: fn for route, fn in wanted.items() if fn not in declared}
    if not unknown:
        return APPLIED
    for route, fn in sorted(unknown.items()):
        click.echo(
            f"vebus: route {route}: no function named {fn!r} in {where} "
            f"(functions: {', '.join(sorted(declared)) or 'none'})",
            err=True,
        )
    click.echo("vebus: not applied; the running routes are unchanged", err=True)
    return INVALID


async def _apply(
    config: Any,
    nats_url: str | None,
    raw_routes: list[Any],
    file: str,
    timeout: float,
    declared_here: set[str],
) -> int:
    import msgspec

    from vebus.routing.store import open_route_store

    async with nats_connection(config, nats_url) as nc:
        if (refused := await _unknown_functions(nc, raw_routes, declared_here)) != APPLIED:
            return refused
        store = await open_route_store(nc.jetstream(), replicas=config.nats.replicas)
        current = await store.get()
        if current is not None and msgspec.json.encode(current[0].routes) == msgspec.json.encode(
            raw_routes
        ):
            revision = current[1]
            click.echo(f"routes unchanged: revision {revision} ({len(raw_routes)} route(s))")
        else:
            revision = await store.put(raw_routes, source=file)
            click.echo(f"stored revision {revision} ({len(raw_routes)} route(s))")

        def problem(r: _Replica) -> str | None:
            s = r.status
            if s is None or s.revision < revision:
                return "did not report the new revision"
            issues = [_missing_text(s)] if s.missing_env else []
            return "; ".join(issues + list(s.errors)) or None

        def done(r: _Replica) -> bool:
            return r.status is not None and r.status.revision >= revision

        replicas = await _wait_for_replicas(nc, done, timeout)
    if not replicas:
        click.echo("no filter, dispatcher or functions replica is running: they load it when "
                   "they start")  # fmt: skip
        return APPLIED
    bad = []
    for r in replicas:
        p = problem(r)
        click.echo(_replica_line(r, p))
        if p:
            bad.append(f"{r.service} {r.instance} ({p})")
    if bad:
        click.echo(
            f"vebus: revision {revision} is not in force everywhere: " + "; ".join(bad), err=True
        )
        return NOT_EVERYWHERE
    return APPLIED


@routes.command("list")
@config_option
@nats_url_option
def list_routes(config_path: str, nats_url: str | None) -> None:
    """Show the stored routes: revision, who applied them, each route's sink and pause.

    When nothing was applied yet, the services run their config file's routes, and
    this says so.
    """
    config = load_or_default(config_path)
    run_async(_list, config, nats_url)


async def _list(config: Any, nats_url: str | None) -> None:
    import datetime as dt

    from vebus.routing.store import open_route_store

    async with nats_connection(config, nats_url) as nc:
        store = await open_route_store(nc.jetstream(), replicas=config.nats.replicas)
        current = await store.get()
        pauses = await store.pauses()
    if current is None:
        click.echo("no routes stored: each filter and dispatcher runs its config file's routes")
        names = [r.name for r in config.routes]
        kinds = {r.name: r.sink.__struct_config__.tag for r in config.routes}
    else:
        route_set, revision = current
        click.echo(
            f"revision {revision}, applied {route_set.applied_at or '?'} by "
            f"{route_set.applied_by or '?'}"
            + (f" from {route_set.source}" if route_set.source else "")
        )
        names = [str(r.get("name")) for r in route_set.routes if isinstance(r, dict)]
        kinds = {
            str(r.get("name")): str((r.get("sink") or {}).get("kind", "?"))
            for r in route_set.routes
            if isinstance(r, dict)
        }
    for name in names:
        record = pauses.get(name)
        state = "active"
        if record is not None and record.since is not None:
            since = dt.datetime.fromtimestamp(record.since, dt.UTC).isoformat(timespec="seconds")
            state = f"PAUSED since {since}" + (f" by {record.by}" if record.by else "")
        elif record is not None and record.by:
            state = f"active (resumed by {record.by})"
        click.echo(f"  {name:<30} {kinds.get(name, '?'):<12} {state}")
    if not names:
        click.echo("  (no routes)")


def _pause_command(paused: bool) -> Any:
    verb = "pause" if paused else "resume"

    @click.argument("name")
    @timeout_option
    @config_option
    @nats_url_option
    def command(name: str, timeout: float, config_path: str, nats_url: str | None) -> None:
        config = load_or_default(config_path)
        sys.exit(run_async(_set_paused, config, nats_url, name, paused, timeout))

    command.__doc__ = (
        """Stop delivering route NAME: its events wait in VEBUS_ROUTES until resumed.

    For sink maintenance: the filter keeps routing events to NAME (up to the route's
    limit, `streams.route_max_msgs`; past it they are dead-lettered ROUTE_FULL and can be
    replayed), the dispatchers stop fetching them, and the time paused does not count
    toward the route's max_age. The pause is stored in NATS KV: it survives restarts.
    Waits until every dispatcher and functions replica reports the route paused.

    \b
    Exit status: 0 done; 1 some dispatcher did not report it within --timeout;
    2 no route is called NAME.
    """
        if paused
        else """Deliver route NAME again, starting with the events that waited while paused.

    Waits until every dispatcher and functions replica reports the route running again.

    \b
    Exit status: 0 done; 1 some dispatcher did not report it within --timeout;
    2 no route is called NAME.
    """
    )
    return routes.command(verb)(command)


async def _set_paused(
    config: Any, nats_url: str | None, name: str, paused: bool, timeout: float
) -> int:
    import datetime as dt

    from vebus.routing.store import open_route_store

    async with nats_connection(config, nats_url) as nc:
        store = await open_route_store(nc.jetstream(), replicas=config.nats.replicas)
        current = await store.get()
        if current is None:
            known = [r.name for r in config.routes]
        else:
            known = [str(r.get("name")) for r in current[0].routes if isinstance(r, dict)]
        if name not in known:
            where = "stored routes" if current is not None else "config file's routes"
            fail(
                f"no route named {name!r} in the {where} (routes: {', '.join(known) or 'none'})",
                INVALID,
            )
        changed = await store.set_paused(name, paused)
        if not changed:
            record = (await store.pauses()).get(name)
            if paused and record is not None and record.since is not None:
                since = dt.datetime.fromtimestamp(record.since, dt.UTC)
                click.echo(f"route {name} was already paused (since {since:%Y-%m-%dT%H:%M:%SZ})")
            else:
                click.echo(f"route {name} was not paused")
        else:
            click.echo(f"route {name} {'paused' if paused else 'resumed'}")

        def done(r: _Replica) -> bool:
            if r.service not in names.DELIVERING_SERVICES:
                return True
            return r.status is not None and (name in r.status.paused) == paused

        replicas = await _wait_for_replicas(nc, done, timeout)
    bad = []
    for r in replicas:
        if r.service not in names.DELIVERING_SERVICES:
            continue
        p = None if done(r) else f"does not report {name} {'paused' if paused else 'running'}"
        click.echo(_replica_line(r, p))
        if p:
            bad.append(f"{r.service} {r.instance}")
    if bad:
        click.echo(f"vebus: not yet in force on {', '.join(bad)}", err=True)
        return NOT_EVERYWHERE
    return APPLIED


pause = _pause_command(True)
resume = _pause_command(False)
