"""A small pool of logged-in sessions with one vCenter, lent to one caller at a time.

Blocking and thread-safe. Sessions are made on demand up to `size` and kept logged in
between loans (a login costs a round trip and a UserLoginSessionEvent on vCenter). A
session idle for longer than `check_idle` seconds is asked whether vCenter still knows it
before it is lent (vCenter ends idle sessions after 30 minutes by default) and logged in
again if not; during a loan, `Session.run` logs in again on NotAuthenticated.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from vebus.config import VCenterEndpoint
from vebus.vsphere._session import HTTP_TIMEOUT, Session

__all__ = ["SessionPool"]

R = TypeVar("R")

#: an idle session older than this is checked with vCenter before it is lent
CHECK_IDLE = 300.0


class SessionPool:
    """Up to `size` sessions with the vCenter of `endpoint`."""

    def __init__(
        self,
        endpoint: VCenterEndpoint,
        *,
        where: str,
        size: int = 4,
        timeout: float = HTTP_TIMEOUT,
        check_idle: float = CHECK_IDLE,
    ) -> None:
        if size < 1:
            raise ValueError(f"size: expected >= 1, got {size}")
        self.endpoint = endpoint
        self.where = where
        self.size = size
        self.timeout = timeout
        self.check_idle = check_idle
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        #: idle sessions, with the time.monotonic() they were given back
        self._idle: list[tuple[Session, float]] = []
        self._made = 0
        self._closed = False

    @contextlib.contextmanager
    def session(self, wait: float | None = None) -> Iterator[Session]:
        """Borrow a logged-in session for the `with` block (waits up to `wait` seconds for
        one to be free; TimeoutError after that)."""
        if not self._free.acquire(timeout=wait):
            raise TimeoutError(f"{self.where}: all {self.size} vCenter sessions are in use")
        try:
            session, stale = self._take()
            try:
                if not session.logged_in or (stale and not _still_valid(session)):
                    session.login()
                yield session
            finally:
                self._give_back(session)
        finally:
            self._free.release()

    def run(self, fn: Callable[[Session], R], wait: float | None = None) -> R:
        """`fn(session)` with a borrowed session."""
        with self.session(wait) as s:
            return fn(s)

    def close(self) -> None:
        """Log every idle session out; sessions on loan are logged out when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session, _ in idle:
            session.logout()

    def _take(self) -> tuple[Session, bool]:
        """An idle session (and whether it idled past `check_idle`), or a new one."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.where}: the session pool is closed")
            if self._idle:
                session, since = self._idle.pop()
                return session, time.monotonic() - since > self.check_idle
            self._made += 1
            # the TLS notice once per pool, not once per session
            return Session(
                self.endpoint, where=self.where, timeout=self.timeout, notice=self._made == 1
            ), False

    def _give_back(self, session: Session) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((session, time.monotonic()))
                return
        session.logout()


def _still_valid(session: Session) -> bool:
    try:
        return session.is_valid()
    except Exception:  # vCenter unreachable: the login that follows says why
        return False
