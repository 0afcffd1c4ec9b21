"""The deadletter service's HTTP API: list, show, replay and purge dead letters.

Described by the OpenAPI document it serves at `/openapi.json` (see `openapi.py`).
Reading is open to whoever can reach the listener (loopback by default); anything that
changes state (replay, purge, cancel) needs `Authorization: Bearer <deadletter.api.token>`:
401 without it or with another token, 403 when the service has no token configured.
Errors are JSON: `{"error": "what was wrong"}`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats.errors
from aiohttp import web
from nats.js import JetStreamContext

from vebus import names
from vebus.bus.dlq import Selection, delete_dead_letter, get_dead_letter, iter_dead_letters
from vebus.config import Config
from vebus.errors import DeadLetterNotFoundError, ErrorCode, RetryableError, VebusError
from vebus.routing.source import RouteSource
from vebus.timespec import parse_time
from vebus_deadletter.jobs import JobNotFoundError, JobRunner, ReplayJob
from vebus_deadletter.openapi import openapi_document

__all__ = ["ApiServer", "build_app"]

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_RATE = 100_000.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SelectionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a purge or replay request selects."""

    ids: list[int] | None = None
    route: str | None = None
    code: str | None = None
    since: str | None = None
    until: str | None = None
    all: bool = False
    #: who asked (the console passes its signed-in operator): logged, kept in a replay job
    by: str = ""


class ReplayBody(SelectionBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A replay request: the selection, and where and how fast."""

    to_route: str | None = None
    rate: float | None = None


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="vebus-deadletter"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def _who(by: str) -> str:
    """`by` as a record keeps it: one line, at most 200 characters."""
    return " ".join(by.split())[:200]


def _check_route(field: str, name: str) -> str:
    if not name or names.token(name) != name:
        raise _HttpError(400, f"{field}: expected a route name (letters, digits, _ and -)")
    return name


def _check_code(code: str) -> str:
    up = code.upper()
    if up not in ErrorCode.__members__:
        raise _HttpError(
            400, f"code: expected one of {', '.join(c.value for c in ErrorCode)}, got {code!r}"
        )
    return up


def _when(field: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise _HttpError(400, f"{field}: {e}") from None


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _HttpError(400, f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise _HttpError(400, f"{name}: expected {lo} to {hi}, got {value}")
    return value


def _selection(body: SelectionBody) -> Selection:
    sel = Selection(
        ids=body.ids,
        route=_check_route("route", body.route) if body.route is not None else None,
        code=_check_code(body.code) if body.code is not None else None,
        since=_when("since", body.since),
        until=_when("until", body.until),
    )
    if body.ids is not None and not body.ids:
        raise _HttpError(400, "ids: expected at least one id")
    if body.all and not sel.is_empty():
        raise _HttpError(400, "all: true selects every dead letter; drop it or the conditions")
    if not body.all and sel.is_empty():
        raise _HttpError(
            400, "give ids, a condition (route, code, since, until), or all: true for everything"
        )
    return sel


async def _body(request: web.Request, typ: type[SelectionBody]) -> Any:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw or b"{}", type=typ)
    except msgspec.ValidationError as e:
        raise _HttpError(400, f"request body: {e}") from None
    except msgspec.DecodeError as e:
        raise _HttpError(400, f"request body is not JSON: {e}") from None


class ApiServer:
    """The handlers, bound to one JetStream context, config, job runner and route source."""

    def __init__(
        self,
        js: JetStreamContext,
        config: Config,
        jobs: JobRunner,
        *,
        routes: RouteSource,
        version: str,
    ) -> None:
        self._js = js
        self._config = config
        self._jobs = jobs
        #: the running route set: what a replay may target
        self._routes = routes
        self._token = (config.deadletter.api.token or "").encode()
        self._document = openapi_document(version)

    # ------------------------------------------------------------------ middleware

    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authorization, and every error as JSON (the app's middleware)."""
        try:
            if request.method not in _SAFE_METHODS:
                self._authorize(request)
            return await handler(request)
        except _HttpError as e:
            return _error(e.status, e.message)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, f"{request.method} {request.path}: {e.reason}")
        except (nats.errors.Error, TimeoutError, RetryableError) as e:
            log.warning("%s %s: NATS request failed: %r", request.method, request.path, e)
            return _error(503, f"NATS did not answer, try again: {e}")
        except VebusError as e:
            return _error(400, str(e))

    def _authorize(self, request: web.Request) -> None:
        if not self._token:
            raise _HttpError(
                403, "replay and purge are off: the service has no deadletter.api.token"
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            raise _HttpError(401, "this needs Authorization: Bearer <deadletter.api.token>")

    # ------------------------------------------------------------------ handlers

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(self._document)

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        q = request.query
        sel = Selection(
            route=_check_route("route", q["route"]) if "route" in q else None,
            code=_check_code(q["code"]) if "code" in q else None,
            since=_when("since", q.get("since")),
            until=_when("until", q.get("until")),
        )
        after = _int_param(request, "after", 0, 0, 2**63)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        items: list[dict[str, object]] = []
        last = next_after = None
        async for dl in iter_dead_letters(self._js, selection=sel, after=after):
            if len(items) == limit:
                next_after = last
                break
            items.append(dl.summary())
            last = dl.id
        return web.json_response({"items": items, "next_after": next_after})

    def _id(self, request: web.Request) -> int:
        raw = request.match_info["id"]
        if not raw.isdigit() or int(raw) < 1:
            raise _HttpError(400, f"id: expected a dead-letter id (a number), got {raw!r}")
        return int(raw)

    async def get_dead_letter(self, request: web.Request) -> web.Response:
        try:
            dl = await get_dead_letter(self._js, self._id(request))
        except DeadLetterNotFoundError as e:
            raise _HttpError(404, str(e)) from None
        return web.json_response(dl.detail())

    async def purge_one(self, request: web.Request) -> web.Response:
        ident = self._id(request)
        try:
            await delete_dead_letter(self._js, ident)
        except DeadLetterNotFoundError as e:
            raise _HttpError(404, str(e)) from None
        log.info("dead letter %d purged over the API", ident)
        return web.Response(status=204)

    async def purge(self, request: web.Request) -> web.Response:
        body: SelectionBody = await _body(request, SelectionBody)
        sel = _selection(body)
        info = await self._js.stream_info(names.DLQ_STREAM)
        purged = gone = 0
        ids = [
            dl.id
            async for dl in iter_dead_letters(self._js, selection=sel, upto=info.state.last_seq)
        ]
        for ident in ids:
            try:
                await delete_dead_letter(self._js, ident)
                purged += 1
            except DeadLetterNotFoundError:
                gone += 1
        log.info(
            "%d dead letter(s) purged over the API (%s)%s",
            purged,
            sel.describe(),
            f" by {_who(body.by)}" if body.by else "",
        )
        return web.json_response({"purged": purged, "gone": gone})

    async def start_replay(self, request: web.Request) -> web.Response:
        body: ReplayBody = await _body(request, ReplayBody)
        sel = _selection(body)
        to_route = body.to_route
        if to_route is not None:
            _check_route("to_route", to_route)
            known = sorted(await self._routes.names())
            if known and to_route not in known:  # no route at all: nothing to check against
                raise _HttpError(
                    400,
                    f"to_route: no route {to_route!r} in the running route set "
                    f"(it has {', '.join(known)})",
                )
        rate = self._config.deadletter.replay_rate if body.rate is None else body.rate
        if not 0 <= rate <= MAX_RATE:
            raise _HttpError(400, f"rate: expected 0 (no limit) to {MAX_RATE:g}, got {rate:g}")
        job = await self._jobs.submit(sel, to_route=to_route, rate=rate, by=_who(body.by))
        return web.json_response(
            msgspec.to_builtins(job),
            status=202,
            headers={"Location": f"/v1/replays/{job.id}"},
        )

    async def list_replays(self, _: web.Request) -> web.Response:
        jobs = await self._jobs.all()
        return web.json_response({"items": [msgspec.to_builtins(j) for j in jobs]})

    async def get_replay(self, request: web.Request) -> web.Response:
        return await self._job(self._jobs.get, request)

    async def cancel_replay(self, request: web.Request) -> web.Response:
        return await self._job(self._jobs.cancel, request)

    @staticmethod
    async def _job(
        act: Callable[[str], Awaitable[ReplayJob]], request: web.Request
    ) -> web.Response:
        """The job of the request's `{id}` after `act` (404 when there is none)."""
        try:
            job = await act(request.match_info["id"])
        except JobNotFoundError as e:
            raise _HttpError(404, str(e)) from None
        return web.json_response(msgspec.to_builtins(job))

    async def stats(self, _: web.Request) -> web.Response:
        routes: dict[str, dict[str, Any]] = {}
        total = 0
        async for dl in iter_dead_letters(self._js):
            total += 1
            r = routes.setdefault(dl.route, {"total": 0, "codes": {}})
            r["total"] += 1
            r["codes"][dl.code] = r["codes"].get(dl.code, 0) + 1
        return web.json_response({"total": total, "routes": routes})


def build_app(server: ApiServer) -> web.Application:
    """The aiohttp application for `server`."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await server.guard(request, handler)

    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    routes: Sequence[web.RouteDef] = [
        web.get("/openapi.json", server.openapi),
        web.get("/v1/dead-letters", server.list_dead_letters),
        web.post("/v1/dead-letters/purge", server.purge),
        web.get("/v1/dead-letters/{id}", server.get_dead_letter),
        web.delete("/v1/dead-letters/{id}", server.purge_one),
        web.post("/v1/replays", server.start_replay),
        web.get("/v1/replays", server.list_replays),
        web.get("/v1/replays/{id}", server.get_replay),
        web.delete("/v1/replays/{id}", server.cancel_replay),
        web.get("/v1/stats", server.stats),
    ]
    app.add_routes(routes)
    return app
