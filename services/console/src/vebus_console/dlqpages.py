"""The dead-letter pages: list with `vebus dlq`'s filters, one letter, replay, purge.

Reading uses `vebus.bus.dlq`, the code `vebus dlq` runs. Replays and purges are the
deadletter service's (vebus_console.deadletters): a replay is one of its jobs, whose
progress the replay page follows; a purge is asked for only after the page has shown what
it would remove and the operator confirmed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from vebus.bus.dlq import Selection, get_dead_letter, iter_dead_letters
from vebus.errors import DeadLetterNotFoundError, ErrorCode
from vebus.timespec import parse_time
from vebus_console.deadletters import DeadletterApiError
from vebus_console.eventjson import event_document
from vebus_console.web import console_of, principal_of, redirect, render

__all__ = ["add_routes"]

log = logging.getLogger(__name__)

PAGE = 50
_FILTERS = ("route", "code", "since", "until")


def _selection(params: Any) -> tuple[Selection, dict[str, str]]:
    """The filters of a form or query (ValueError names a wrong one), and as given."""
    given = {k: str(params.get(k) or "").strip() for k in _FILTERS}
    code = given["code"].upper()
    if code and code not in ErrorCode.__members__:
        raise ValueError(f"code: expected one of {', '.join(c.value for c in ErrorCode)}")
    times = {}
    for key in ("since", "until"):
        if given[key]:
            try:
                times[key] = parse_time(given[key])
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
    return Selection(
        route=given["route"] or None,
        code=code or None,
        since=times.get("since"),
        until=times.get("until"),
    ), given


async def list_page(request: web.Request) -> web.Response:
    console = console_of(request)
    error = ""
    letters: list[dict[str, object]] = []
    next_after = 0
    try:
        sel, given = _selection(request.query)
    except ValueError as e:
        sel, given, error = Selection(), {k: request.query.get(k, "") for k in _FILTERS}, str(e)
    after = request.query.get("after", "0")
    after_id = int(after) if after.isdigit() else 0
    if not error:
        async for dl in iter_dead_letters(console.js, selection=sel, after=after_id):
            if len(letters) == PAGE:
                next_after = int(letters[-1]["id"])  # type: ignore[call-overload]
                break
            letters.append(dl.summary())
    jobs: list[dict[str, Any]] = []
    jobs_error = ""
    try:
        jobs = (await console.dlq.jobs())[:5]
    except DeadletterApiError as e:
        jobs_error = str(e)
    return render(
        request,
        "deadletters.html",
        letters=letters,
        filters=given,
        codes=[c.value for c in ErrorCode],
        next_after=next_after,
        jobs=jobs,
        jobs_error=jobs_error,
        error=error,
    )


async def letter_page(request: web.Request) -> web.Response:
    console = console_of(request)
    ident = int(request.match_info["id"])
    try:
        dl = await get_dead_letter(console.js, ident)
    except DeadLetterNotFoundError:
        raise web.HTTPNotFound(reason=f"no dead letter {ident} (replayed or purged?)") from None
    event = dl.event()
    return render(
        request,
        "deadletter.html",
        dl=dl.summary(),
        msg_id=dl.msg_id,
        headers=dl.headers,
        event_json=json.dumps(event_document(event), indent=2, ensure_ascii=False) if event else "",
        data=dl.data(),
    )


def _api_selection(form: Any) -> tuple[dict[str, Any], str]:
    """What the deadletter API is asked to act on, and how a person says it."""
    scope = str(form.get("scope") or "ids")
    if scope == "all":
        return {"all": True}, "every dead letter"
    if scope == "filter":
        sel, given = _selection(form)
        if sel.is_empty():
            raise ValueError("the filters select every dead letter: choose 'all' to mean that")
        body = {k: v for k, v in given.items() if v}
        return body, sel.describe()
    ids = [int(v) for v in form.getall("id", []) if str(v).isdigit()]
    if not ids:
        raise ValueError("select at least one dead letter")
    return {"ids": ids}, "id " + ", ".join(map(str, ids))


async def replay(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    who = principal_of(request)
    form = await request.post()
    try:
        body, described = _api_selection(form)
    except ValueError as e:
        return redirect("/deadletters", error=str(e))
    to_route = str(form.get("to_route") or "").strip()
    if to_route:
        body["to_route"] = to_route
    try:
        job = await console.dlq.replay(body, by=who.label)
    except DeadletterApiError as e:
        return redirect("/deadletters", error=str(e))
    log.info("replay %s of %s asked by %s", job.get("id"), described, who.label)
    return redirect(f"/replays/{job['id']}")


async def purge(request: web.Request) -> web.StreamResponse:
    """Purge after confirmation: the first POST shows what would go, the second does it."""
    console = console_of(request)
    who = principal_of(request)
    form = await request.post()
    try:
        body, described = _api_selection(form)
    except ValueError as e:
        return redirect("/deadletters", error=str(e))
    if form.get("confirm") != "yes":
        count = 0
        if "ids" in body:
            count = len(body["ids"])
        else:
            sel = _selection(form)[0] if "all" not in body else Selection()
            async for _ in iter_dead_letters(console.js, selection=sel):
                count += 1
        fields = [(k, v) for k in ("scope", *_FILTERS) if (v := str(form.get(k) or ""))]
        fields += [("id", str(i)) for i in body.get("ids", [])]
        return render(
            request, "purge_confirm.html", described=described, count=count, fields=fields
        )
    try:
        result = await console.dlq.purge(body, by=who.label)
    except DeadletterApiError as e:
        return redirect("/deadletters", error=str(e))
    log.info("purge of %s by %s: %s", described, who.label, result)
    return redirect("/deadletters", ok=f"purged {result.get('purged', 0)} dead letter(s)")


async def replay_page(request: web.Request) -> web.Response:
    console = console_of(request)
    try:
        job = await console.dlq.job(request.match_info["id"])
    except DeadletterApiError as e:
        return render(request, "error.html", status=502, message=str(e))
    return render(request, "replay.html", job=job)


async def replay_json(request: web.Request) -> web.Response:
    console = console_of(request)
    try:
        return web.json_response(await console.dlq.job(request.match_info["id"]))
    except DeadletterApiError as e:
        return web.json_response({"error": str(e)}, status=502)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/deadletters", list_page)
    app.router.add_get(r"/deadletters/{id:\d+}", letter_page)
    app.router.add_post("/deadletters/replay", replay)
    app.router.add_post("/deadletters/purge", purge)
    app.router.add_get(r"/replays/{id:[0-9a-f]+}", replay_page)
    app.router.add_get(r"/api/replays/{id:[0-9a-f]+}", replay_json)
