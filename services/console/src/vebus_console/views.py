"""Pages that only read: live events, the history, one event, the status of the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlencode

import msgspec
import nats.errors
from aiohttp import web
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from vebus import names
from vebus.bus.cloudevent import CloudEvent, from_headers
from vebus.bus.status import collect_status, discover, function_summary
from vebus.errors import InvalidEventError
from vebus.routing.router import Router
from vebus.routing.source import collect_statuses
from vebus.timespec import format_time
from vebus_console.chart import render_svg
from vebus_console.eventjson import event_document, event_from_document, event_json
from vebus_console.filters import parse_filter
from vebus_console.history import MAX_EXPORT, iter_matches, parse_query, search
from vebus_console.state import Console
from vebus_console.web import console_of, render

__all__ = ["add_routes", "explain_event"]

log = logging.getLogger(__name__)

#: a quiet stream still sends a comment this often (proxies close idle connections)
KEEPALIVE = 15.0


# ---------------------------------------------------------------------------- live


async def live_page(request: web.Request) -> web.Response:
    console = console_of(request)
    text = request.query.get("q", "")
    error = ""
    try:
        parse_filter(text)
    except ValueError as e:
        error = str(e)
    return render(
        request,
        "live.html",
        q=text,
        error=error,
        rate=console.config.console.live_rate,
    )


async def live_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `ev` frames (newest last) and a `stats` frame each second."""
    console = console_of(request)
    try:
        flt = parse_filter(request.query.get("q"))
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=400)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    viewer = console.hub.add(flt, console.config.console.live_rate)
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            try:
                frame = await asyncio.wait_for(viewer.queue.get(), KEEPALIVE)
            except TimeoutError:
                frame = b": keepalive\n\n"
            if frame is None:
                break
            await response.write(frame)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        console.hub.remove(viewer)
    return response


async def explain_event(console: Console, event: CloudEvent) -> list[dict[str, Any]]:
    """Every running route, whether it matches `event`, and why (as `vebus routes test`)."""
    view = await console.routes.load()
    doc = event.as_match_input()
    return [
        {"route": route.name, "matched": ex.matched, "lines": ex.lines(f"route {route.name}")}
        for route, ex in Router(view.routes.values()).explain(doc)
    ]


async def api_explain(request: web.Request) -> web.Response:
    """POST a CloudEvent (JSON): which routes it matches and why."""
    console = console_of(request)
    try:
        event = event_from_document(await request.read())
        routes = await explain_event(console, event)
    except InvalidEventError as e:
        return web.json_response({"error": f"event: {e}"}, status=400)
    return web.json_response({"routes": routes})


# ---------------------------------------------------------------------------- history


_QUERY_KEYS = ("from", "to", "vcenter", "type", "object", "user", "after", "limit")


async def _subjects(console: Console) -> dict[str, list[str]]:
    """The vCenters and event classes VEBUS_EVENTS holds (for the form's suggestions)."""
    try:
        info = await console.js.stream_info(names.EVENTS_STREAM, subjects_filter=">")
    except (nats.errors.Error, TimeoutError):
        return {"vcenters": [], "types": []}
    vcs, types = set(), set()
    for subject in list(info.state.subjects or {})[:5000]:
        parts = subject.split(".")
        if len(parts) == 4:
            vcs.add(parts[2])
            types.add(parts[3])
    return {"vcenters": sorted(vcs), "types": sorted(types)}


async def history_page(request: web.Request) -> web.Response:
    console = console_of(request)
    params = {k: request.query.get(k, "") for k in _QUERY_KEYS}
    params["from"] = params["from"] or "1h"
    params["to"] = params["to"] or "now"
    page = None
    error = ""
    try:
        query = parse_query(params)
        page = await search(console.js, query)
    except ValueError as e:
        error = str(e)
    next_link = ""
    if page is not None and page.next_after:
        # pin the window: "1h" must not move on between two pages
        nxt = {**params, "after": str(page.next_after)}
        nxt["from"], nxt["to"] = format_time(query.start), format_time(query.end)
        next_link = "/history?" + urlencode({k: v for k, v in nxt.items() if v})
    export = "/history/export?" + urlencode(
        {k: v for k, v in params.items() if v and k not in ("after", "limit")}
    )
    return render(
        request,
        "history.html",
        params=params,
        page=page,
        error=error,
        next_link=next_link,
        export_link=export,
        suggestions=await _subjects(console),
    )


async def history_export(request: web.Request) -> web.StreamResponse:
    """Every event the search selects, as JSON lines (one CloudEvent a line)."""
    console = console_of(request)
    params = {k: request.query.get(k, "") for k in _QUERY_KEYS if k not in ("after", "limit")}
    try:
        query = parse_query({**params, "from": params.get("from") or "1h"})
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=400)
    name = f"vebus-events-{query.start:%Y%m%dT%H%M%SZ}.jsonl"
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
    )
    await response.prepare(request)
    written = 0
    matches = iter_matches(console.js, query)
    try:
        buf: list[bytes] = []
        async for msg, _ in matches:
            try:
                buf.append(event_json(from_headers(msg.headers, msg.data)) + b"\n")
            except InvalidEventError:
                continue
            written += 1
            if len(buf) >= 500:
                await response.write(b"".join(buf))
                buf.clear()
            if written >= MAX_EXPORT:
                break
        if buf:
            await response.write(b"".join(buf))
    except ConnectionResetError:
        pass
    finally:
        await matches.aclose()
    await response.write_eof()
    return response


# ---------------------------------------------------------------------------- one event


async def _stored_event(
    console: Console, request: web.Request
) -> tuple[int, RawStreamMsg, CloudEvent]:
    raw = request.match_info["seq"]
    if not raw.isdigit() or int(raw) < 1:
        raise web.HTTPNotFound(reason=f"no event {raw!r}")
    seq = int(raw)
    try:
        msg = await console.js.get_msg(names.EVENTS_STREAM, seq=seq)
    except NotFoundError:
        raise web.HTTPNotFound(
            reason=f"event {seq} is not in {names.EVENTS_STREAM} (past its retention?)"
        ) from None
    try:
        return seq, msg, from_headers(msg.headers, msg.data or b"")
    except InvalidEventError as e:
        raise web.HTTPNotFound(reason=f"message {seq} is not a CloudEvent: {e}") from None


async def event_page(request: web.Request) -> web.Response:
    console = console_of(request)
    seq, msg, event = await _stored_event(console, request)
    doc = event_document(event)
    return render(
        request,
        "event.html",
        seq=seq,
        subject=msg.subject,
        stored=format_time(msg.time) if msg.time else "",
        event=event,
        event_json=json.dumps(doc, indent=2, ensure_ascii=False),
        routes=await explain_event(console, event),
    )


async def event_raw(request: web.Request) -> web.Response:
    console = console_of(request)
    _, _, event = await _stored_event(console, request)
    return web.Response(body=event_json(event), content_type="application/json")


# ---------------------------------------------------------------------------- status


async def status_page(request: web.Request) -> web.Response:
    console = console_of(request)
    status, counts, replicas, replies = await asyncio.gather(
        collect_status(console.nc, interval=0.5),
        console.chart(),
        collect_statuses(console.nc, 0.5),
        discover(console.nc),
    )
    stored = None
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        stored = await console.store.get()
    functions = sorted(function_summary(replies).values(), key=lambda f: str(f["function"]))
    return render(
        request,
        "status.html",
        s=status,
        chart=render_svg(counts),
        chart_total=counts.total,
        route_replicas=sorted(
            (msgspec.to_builtins(r) for r in replicas),
            key=lambda r: (r["service"], r["instance"]),
        ),
        revision=stored[1] if stored else 0,
        applied=stored[0] if stored else None,
        functions=functions,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/live", live_page)
    app.router.add_get("/live/stream", live_stream)
    app.router.add_post("/api/explain", api_explain)
    app.router.add_get("/history", history_page)
    app.router.add_get("/history/export", history_export)
    app.router.add_get(r"/events/{seq:\d+}", event_page)
    app.router.add_get(r"/events/{seq:\d+}.json", event_raw)
    app.router.add_get("/status", status_page)
