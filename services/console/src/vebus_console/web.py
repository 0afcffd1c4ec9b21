"""The console's web application: access control on every request, then the pages.

`guard` (the one middleware) decides who is asking and whether they may (vebus_console.auth
describes the rules), and adds the security headers to every answer: a Content-Security-
Policy that allows only the console's own scripts and styles (no inline script, no other
origin), no framing, no MIME sniffing. Pages are Jinja2 templates with autoescaping;
static files ship in the package.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import nats.errors
from aiohttp import web

from vebus.errors import RetryableError
from vebus_console.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, Principal
from vebus_console.state import Console

__all__ = ["build_app", "principal_of", "render", "templates"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
#: unsafe methods a viewer may use: they only compute an answer, or sign in and out
READ_POSTS = (
    re.compile(r"^/login$"),
    re.compile(r"^/logout$"),
    re.compile(r"^/api/explain$"),
    re.compile(r"^/routes/[A-Za-z0-9_-]+/try$"),
)
_PUBLIC = re.compile(r"^/(static/.*|login|favicon\.ico)$")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def templates() -> jinja2.Environment:
    """The page templates of this package (autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vebus_console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request["principal"]
    return principal


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page: `template` with the signed-in user, their CSRF token and the flash message."""
    console = console_of(request)
    principal: Principal | None = request.get("principal")
    static = request.app.router["static"]

    def static_url(filename: str) -> str:
        return str(static.url_for(filename=filename))

    page = console.templates.get_template(template).render(
        static=static_url,
        user=principal,
        csrf=principal.csrf if principal else "",
        path=request.path,
        ok=request.query.get("ok", ""),
        error=context.pop("error", request.query.get("error", "")),
        **context,
    )
    return web.Response(text=page, content_type="text/html", status=status)


def redirect(location: str, **flash: str) -> web.HTTPSeeOther:
    """A 303 to `location` with a flash message (`ok=...` or `error=...`)."""
    if flash:
        key, value = next(iter(flash.items()))
        sep = "&" if "?" in location else "?"
        location = f"{location}{sep}{key}={quote(value)}"
    return web.HTTPSeeOther(location)


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    if "text/html" in request.headers.get("Accept", "") and request.method in _SAFE:
        return render(request, "error.html", status=status, message=message)
    headers = {"WWW-Authenticate": 'Bearer realm="vebus-console"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def _authenticate(
    console: Console, request: web.Request
) -> tuple[Principal | None, str | None]:
    """(who, why not): credentials in the Authorization header must be right; a session
    cookie that is not (expired, another key) is as if there were none."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            who = await console.auth.token(value)
        elif scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, "malformed Basic credentials"
            who = await console.auth.password(name, password)
        else:
            return None, f"unsupported Authorization scheme {scheme!r}: use Bearer"
        return (who, None) if who else (None, "wrong token or password")
    return console.auth.session(request.cookies.get(COOKIE)), None


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another origin."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        referer = request.headers.get("Referer")
        if not referer:
            return origin is None  # "null": a sandboxed or privacy-stripped context: refuse
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin == f"{request.scheme}://{request.host}"


async def _csrf_ok(request: web.Request, principal: Principal) -> bool:
    if not _same_origin(request):
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        given = str((await request.post()).get(CSRF_FIELD) or "")
    return bool(given) and hmac.compare_digest(given or "", principal.csrf)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, roles and cross-site checks, then security headers."""
    response = await _guarded(request, handler)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "public, max-age=3600"
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = console_of(request)
    try:
        if _PUBLIC.match(request.path) and request.path != "/login":
            return await handler(request)
        principal, problem = await _authenticate(console, request)
        if request.path == "/login":
            request["principal"] = None
            if request.method not in _SAFE and not _same_origin(request):
                return _refuse(request, 403, "sign-in from another site refused")
            return await handler(request)
        if principal is None:
            if (
                problem is None
                and request.method in _SAFE
                and ("text/html" in request.headers.get("Accept", ""))
            ):
                return redirect("/login?next=" + quote(request.path_qs, safe=""))
            return _refuse(request, 401, problem or "sign in first (or send a bearer token)")
        request["principal"] = principal
        if request.method not in _SAFE:
            if principal.via == "session" and not await _csrf_ok(request, principal):
                return _refuse(
                    request, 403, "refused: the request did not come from a console page"
                )
            if not principal.operator and not any(p.match(request.path) for p in READ_POSTS):
                return _refuse(
                    request, 403, f"{principal.name} is a viewer: this needs the operator role"
                )
        return await handler(request)
    except (nats.errors.Error, TimeoutError, RetryableError) as e:
        log.warning("%s %s: NATS request failed: %r", request.method, request.path, e)
        return _refuse(request, 503, f"NATS did not answer, try again: {e!r}")
    except web.HTTPException as e:
        if e.status >= 400 and e.status != 404 and e.status != 405:
            return _refuse(request, e.status, e.reason)
        if e.status in (404, 405):
            return _refuse(request, e.status, f"{request.method} {request.path}: {e.reason}")
        raise


# ---------------------------------------------------------------------------- sign-in


def _next(value: str | None) -> str:
    """A local path to go to after signing in (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/live"


async def login_page(request: web.Request) -> web.Response:
    console = console_of(request)
    return render(
        request,
        "login.html",
        next=_next(request.query.get("next")),
        no_users=not console.auth.has_users,
    )


async def login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    name = str(form.get("user") or "").strip()
    secret = str(form.get("password") or "")
    token = str(form.get("token") or "").strip()
    who = await console.auth.token(token) if token else await console.auth.password(name, secret)
    if who is None:
        log.warning("sign-in refused for %r from %s", name or "(token)", request.remote)
        return render(
            request,
            "login.html",
            status=401,
            next=_next(str(form.get("next") or "")),
            no_users=not console.auth.has_users,
            error="wrong user name, password or token",
        )
    log.info("%s (%s) signed in from %s", who.name, who.role, request.remote)
    response = web.HTTPSeeOther(_next(str(form.get("next") or "")))
    response.set_cookie(
        COOKIE,
        console.auth.issue(who),
        max_age=int(console.auth.max_age),
        httponly=True,
        samesite="Strict",
        secure=console.https,
        path="/",
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    return response


async def index(_: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/live")


def build_app(console: Console) -> web.Application:
    """The aiohttp application of `console`."""
    from vebus_console import dlqpages, routepages, views

    app = web.Application(middlewares=[guard], client_max_size=2 * 1024 * 1024)
    app[CONSOLE] = console
    static = files("vebus_console") / "static"
    app.router.add_get("/", index)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    views.add_routes(app)
    routepages.add_routes(app)
    dlqpages.add_routes(app)
    app.router.add_static("/static", str(static), append_version=True, name="static")
    return app
