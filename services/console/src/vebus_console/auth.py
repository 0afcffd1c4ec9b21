"""Who is asking, and may they: sign-in, sessions, roles, and cross-site request checks.

- **Credentials.** `console.users` lists each user with a role and a password hash, a
  bearer-token hash, or both (scrypt, `vebus.passwords`; `python -m vebus_console.passwd`
  makes them). A browser signs in on /login and gets a session cookie; a program sends
  `Authorization: Bearer <token>` (or Basic) with each request. A checked token is
  remembered by its SHA-256 for TOKEN_CACHE seconds, so a page's stream of requests does
  not cost an scrypt each.
- **Sessions.** The cookie holds the user, an expiry and a random nonce, signed with
  HMAC-SHA256 (`console.session_key`, or a random key per process). It is HttpOnly,
  SameSite=Strict, and Secure over HTTPS. The role is read from the config at each request,
  so a user removed or demoted loses their rights at once.
- **Roles.** viewer: every page and every read; operator: also what changes state
  (pause, resume, apply, replay, purge). Every unsafe request (POST, DELETE, ...) needs the
  operator role except the few listed in READ_POSTS, which only compute an answer (try an
  event, explain an event) or sign in and out. Refused: 401 without valid credentials (a
  wrong token, an expired session), 403 for a viewer.
- **Cross-site requests.** An unsafe request authenticated by the cookie must carry the
  session's CSRF token (form field `csrf` or header `X-CSRF-Token`, an HMAC of the
  session's nonce) and, when the browser sends one, an `Origin` equal to the console's
  own. A bearer token is never sent by a browser on its own, so those requests need
  neither.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vebus.config import ConsoleUser
from vebus.passwords import verify_secret

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "Authenticator", "Principal"]

COOKIE = "vebus_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
#: seconds a checked bearer token is remembered
TOKEN_CACHE = 300.0
OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """A signed-in user."""

    name: str
    role: str
    #: "session" (the cookie) or "token" (an Authorization header)
    via: str
    #: the session's CSRF token ("" for a token)
    csrf: str = ""

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR

    @property
    def label(self) -> str:
        """How records name them: `alice (console)`."""
        return f"{self.name} (console)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks credentials against `console.users`; issues and reads session cookies."""

    def __init__(
        self, users: Sequence[ConsoleUser], *, session_key: str | None, max_age: float
    ) -> None:
        self._users = {u.name: u for u in users}
        self._key = (session_key or secrets.token_hex(32)).encode()
        self.max_age = max_age
        #: sha256(token) -> (user name, when checked)
        self._tokens: dict[bytes, tuple[str, float]] = {}

    @property
    def has_users(self) -> bool:
        return bool(self._users)

    def _principal(self, name: str, via: str, csrf: str = "") -> Principal | None:
        user = self._users.get(name)
        return Principal(name=name, role=user.role, via=via, csrf=csrf) if user else None

    async def password(self, name: str, password: str) -> Principal | None:
        """The user, if `password` is theirs."""
        user = self._users.get(name)
        stored = user.password_hash if user is not None else None
        if not stored or not password:
            # the same work either way: no hint which user names exist
            await asyncio.to_thread(verify_secret, password or "-", _DUMMY)
            return None
        ok = await asyncio.to_thread(verify_secret, password, stored)
        return self._principal(name, "token") if ok else None

    async def token(self, token: str) -> Principal | None:
        """The user whose bearer token this is."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._tokens.get(digest)
        if cached is not None and now - cached[1] < TOKEN_CACHE:
            return self._principal(cached[0], "token")
        for user in self._users.values():
            stored = user.token_hash
            if not stored:
                continue
            ok: bool = await asyncio.to_thread(verify_secret, token, stored)
            if ok:
                if len(self._tokens) > 1000:
                    self._tokens.clear()
                self._tokens[digest] = (user.name, now)
                return self._principal(user.name, "token")
        return None

    # ------------------------------------------------------------------ sessions

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def csrf_of(self, nonce: str) -> str:
        return self._sign(b"csrf:" + nonce.encode())[:32]

    def issue(self, principal: Principal) -> str:
        """A session cookie value for `principal`."""
        payload = json.dumps(
            {"u": principal.name, "e": int(time.time() + self.max_age), "n": secrets.token_hex(8)},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{self._sign(payload)}"

    def session(self, cookie: str | None) -> Principal | None:
        """The user of a session cookie that is ours and not expired."""
        if not cookie or "." not in cookie:
            return None
        body, _, sig = cookie.partition(".")
        try:
            payload = _unb64(body)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            doc = json.loads(payload)
            name, expires, nonce = str(doc["u"]), float(doc["e"]), str(doc["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        return self._principal(name, "session", self.csrf_of(nonce))


#: a hash to check against when the user does not exist (same cost as a real check)
_DUMMY = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0$" + _b64(b"\0" * 32)
