"""The routes pages: every route with its state and figures; pause, resume, edit, apply,
try an event.

Changes go through the route store exactly as `vebus routes` makes them: a route set is
validated by `vebus.routing.store.check_routes` (what `vebus routes apply` runs) and
stored with `RouteStore.put(..., last=<the revision the page showed>)`, so an apply
based on a revision someone has replaced meanwhile is refused (StaleRevisionError), not
written over theirs; pauses with `RouteStore.set_paused`. Each records the signed-in
operator (`alice (console)`), which `vebus routes list` shows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from typing import Any

import msgspec
import nats.errors
import yaml
from aiohttp import web

from vebus import names
from vebus.errors import ConfigError, InvalidEventError, PatternError, StaleRevisionError
from vebus.events.patterns import compile_pattern, explain_match
from vebus.routing.source import collect_statuses
from vebus.routing.store import check_routes, route_name
from vebus.timespec import format_time
from vebus_console.eventjson import event_from_document
from vebus_console.redact import redact_route, restore
from vebus_console.state import Console
from vebus_console.web import console_of, principal_of, redirect, render

__all__ = ["add_routes", "written_routes"]

log = logging.getLogger(__name__)

#: a page shows counters at most this many seconds old (else it samples them first)
FRESH = 3.0


async def written_routes(console: Console) -> tuple[list[Any], int]:
    """The running route set as written (stored, else the config file's) and its revision
    (0: the config file's)."""
    stored = await console.store.get()
    if stored is not None:
        return list(stored[0].routes), stored[1]
    return list(console.config_routes), 0


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _delivery(raw: dict[str, Any]) -> str:
    d = raw.get("delivery") or {}
    return ", ".join(f"{k}: {v}" for k, v in d.items() if k != "backoff") or "defaults"


async def routes_page(request: web.Request) -> web.Response:
    console = console_of(request)
    raw_routes, revision = await written_routes(console)
    stored = await console.store.get()
    pauses = await console.store.pauses()
    backlog: dict[str, int] = {}
    try:
        for info in await console.js.consumers_info(names.ROUTES_STREAM):
            route = names.route_of_durable(info.name or "")
            if route is not None:
                backlog[route] = (
                    backlog.get(route, 0) + (info.num_pending or 0) + (info.num_ack_pending or 0)
                )
    except (nats.errors.Error, TimeoutError) as e:
        log.debug("consumers of %s not read: %r", names.ROUTES_STREAM, e)
    dead: dict[str, int] = {}
    try:
        dlq = await console.js.stream_info(names.DLQ_STREAM, subjects_filter=names.DLQ_SUBJECTS)
        dead = {names.route_of_dlq_subject(s): n for s, n in (dlq.state.subjects or {}).items()}
    except (nats.errors.Error, TimeoutError):
        pass
    if time.monotonic() - console.counters.at > FRESH:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await console.sample_routes()
    counters = console.counters
    sampled = counters.at > 0
    rows = []
    for raw in raw_routes:
        if not isinstance(raw, dict):
            continue
        name = route_name(raw)
        record = pauses.get(name)
        shown = redact_route(raw)
        rows.append(
            {
                "name": name,
                "match": _compact(raw.get("match") or {}) if raw.get("match") else "",
                "sink": shown.get("sink") or {},
                "kind": (shown.get("sink") or {}).get("kind", "?"),
                "sink_text": _compact(shown.get("sink") or {}),
                "delivery": _delivery(raw),
                "paused": record is not None and record.paused,
                "paused_since": format_time(_utc(record.since)) if record and record.since else "",
                "paused_by": record.by if record else "",
                "backlog": backlog.get(names.token(name)),
                "rate": counters.rate.get(name),
                "delivered": counters.delivered.get(name, 0.0 if sampled else None),
                "failed": counters.failed.get(name, 0.0 if sampled else None),
                "dead_letters": dead.get(names.token(name), 0),
            }
        )
    replicas = sorted(
        (msgspec.to_builtins(r) for r in await collect_statuses(console.nc, 0.5)),
        key=lambda r: (r["service"], r["instance"]),
    )
    return render(
        request,
        "routes.html",
        rows=rows,
        revision=revision,
        applied=stored[0] if stored else None,
        replicas=replicas,
        sampled=bool(counters.rate),
    )


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


async def _known(console: Console, name: str) -> None:
    if name not in await console.routes.names():
        raise web.HTTPNotFound(reason=f"no route named {name!r} in the running route set")


async def pause(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.StreamResponse:
    console = console_of(request)
    who = principal_of(request)
    name = request.match_info["name"]
    await _known(console, name)
    changed = await console.store.set_paused(name, paused, by=who.label)
    verb = "paused" if paused else "resumed"
    if changed:
        log.info("route %s %s by %s", name, verb, who.label)
    back = "/routes" if request.query.get("from") != "route" else f"/routes/{name}"
    return redirect(
        back, ok=f"route {name} {verb}" if changed else f"route {name} was already {verb}"
    )


# ---------------------------------------------------------------------------- editing


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


async def edit_page(request: web.Request) -> web.Response:
    console = console_of(request)
    raw_routes, revision = await written_routes(console)
    single = request.query.get("route", "")
    if single:
        found = [r for r in raw_routes if route_name(r) == single]
        if not found:
            raise web.HTTPNotFound(reason=f"no route named {single!r}")
        text = _yaml(redact_route(found[0]))
    else:
        text = _yaml({"routes": [redact_route(r) for r in raw_routes]})
    return render(request, "route_edit.html", text=text, revision=revision, single=single)


def _parse_submitted(text: str, single: str) -> list[Any] | dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(e, 'problem', None) or e}"]) from None
    if single:
        if (
            isinstance(raw, dict)
            and isinstance(raw.get("routes"), list)
            and len(raw["routes"]) == 1
        ):
            raw = raw["routes"][0]
        if not isinstance(raw, dict):
            raise ConfigError(["expected one route: a mapping with name, match, sink, delivery"])
        return raw
    if isinstance(raw, list):
        raw = {"routes": raw}
    if not isinstance(raw, dict) or "routes" not in raw:
        raise ConfigError(["expected a `routes:` list (a vebus.yaml, or only its routes)"])
    routes = raw["routes"] or []
    if not isinstance(routes, list):
        raise ConfigError([f"routes: expected a list, got {type(routes).__name__}"])
    return routes


async def apply(request: web.Request) -> web.StreamResponse:
    """Validate the submitted routes as `vebus routes apply` does and store them, unless the
    stored set moved past the revision the page was showing."""
    console = console_of(request)
    who = principal_of(request)
    form = await request.post()
    text = str(form.get("text") or "")
    single = str(form.get("route") or "")
    shown_revision = str(form.get("revision") or "")
    current, revision = await written_routes(console)

    def again(errors: list[str], status: int = 400) -> web.Response:
        return render(
            request,
            "route_edit.html",
            status=status,
            text=text,
            revision=shown_revision,
            single=single,
            errors=errors,
        )

    if not shown_revision.isdigit() or int(shown_revision) != revision:
        return again(
            [
                f"the stored route set is at revision {revision}, not {shown_revision}: someone "
                "applied routes meanwhile. Nothing was changed; open the editor again to start "
                "from their version."
            ],
            409,
        )
    try:
        submitted = _parse_submitted(text, single)
    except ConfigError as e:
        return again(e.errors)
    if single:
        assert isinstance(submitted, dict)
        new = [submitted if route_name(r) == single else r for r in current]
        if not any(route_name(r) == single for r in current):
            return again([f"route {single} is no longer in the route set"], 409)
    else:
        assert isinstance(submitted, list)
        new = submitted
    restored, problems = restore(new, current)
    if problems:
        return again(problems)
    try:
        checked = check_routes({"routes": restored}, "routes")
    except ConfigError as e:
        return again(e.errors)
    try:
        stored = await console.store.put(checked, source="console", by=who.label, last=revision)
    except StaleRevisionError as e:
        return again([f"{e}. Nothing was changed."], 409)
    log.info("route set revision %d (%d route(s)) applied by %s", stored, len(checked), who.label)
    return redirect("/routes", ok=f"stored revision {stored} ({len(checked)} route(s))")


# ---------------------------------------------------------------------------- one route


async def route_page(request: web.Request) -> web.Response:
    return await _route_page(request)


async def _route_page(
    request: web.Request, *, event_text: str = "", result: Any = None, error: str = ""
) -> web.Response:
    console = console_of(request)
    name = request.match_info["name"]
    raw_routes, revision = await written_routes(console)
    found = [r for r in raw_routes if route_name(r) == name]
    if not found:
        raise web.HTTPNotFound(reason=f"no route named {name!r} in the running route set")
    record = (await console.store.pauses()).get(name)
    return render(
        request,
        "route.html",
        name=name,
        revision=revision,
        route_yaml=_yaml(redact_route(found[0])),
        paused=record is not None and record.paused,
        paused_by=record.by if record else "",
        event_text=event_text,
        result=result,
        error=error,
    )


async def try_event(request: web.Request) -> web.Response:
    """Match a pasted CloudEvent against the route's pattern, as `vebus routes test`."""
    console = console_of(request)
    name = request.match_info["name"]
    form = await request.post()
    text = str(form.get("event") or "")
    route = await console.routes.lookup(name)
    if route is None:
        raise web.HTTPNotFound(reason=f"no route named {name!r} that parses here")
    try:
        event = event_from_document(text)
        pattern = compile_pattern(route.match, path="match") if route.match else None
        explanation = explain_match(pattern, event.as_match_input())
    except (InvalidEventError, PatternError) as e:
        return await _route_page(request, event_text=text, error=f"event: {e}")
    return await _route_page(
        request,
        event_text=text,
        result={"matched": explanation.matched, "lines": explanation.lines(f"route {name}")},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/routes", routes_page)
    app.router.add_get("/routes/edit", edit_page)
    app.router.add_post("/routes/apply", apply)
    app.router.add_get(r"/routes/{name:[A-Za-z0-9_-]+}", route_page)
    app.router.add_post(r"/routes/{name:[A-Za-z0-9_-]+}/pause", pause)
    app.router.add_post(r"/routes/{name:[A-Za-z0-9_-]+}/resume", resume)
    app.router.add_post(r"/routes/{name:[A-Za-z0-9_-]+}/try", try_event)
