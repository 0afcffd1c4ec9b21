"""One logged-in vCenter session: the only place vebus logs in to a vCenter.

Blocking (pyvmomi blocks): call it from worker threads. It may be shared by several
threads: pyvmomi's stub keeps a pool of HTTP connections, and a re-login is done once
however many threads find the session expired at the same time.

- TLS: the policy of vebus.vsphere._tls (verify against the system's CAs or `ca_file`;
  `insecure: true` verifies nothing and is logged as a warning when the session is made);
  an SSL context is always handed to pyvmomi.
- Password: `password`, or `password_file` read at each login (a rotated secret is used
  at the next login).
- Timeouts: every HTTP request of the session, the login's included, is bounded by
  `timeout` seconds (connect and each read). pyvmomi's SmartConnect asks the server for
  its API versions with an HTTP connection that has no timeout at all
  (`pyVim.connect.__GetElementTree`): a vCenter that accepts the connection and never
  answers would hold the login for ever. So the session reads `vimServiceVersions.xml`
  itself, with the timeout, picks the newest version both sides know as SmartConnect does,
  and logs in with `pyVim.connect.Connect`.
- Expiry: `run(fn)` calls `fn(si)` and, when vCenter answers NotAuthenticated (the session
  expired or an administrator ended it), logs in again once and calls `fn` again.
- Errors of the login are vebus.errors VCenter* classes; a `password_file` or `ca_file` that
  cannot be used is a ConfigError naming it.

Every login makes a UserLoginSessionEvent on vCenter: log in again only when needed.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.etree import ElementTree

from pyVim import connect as pyvim_connect
from pyVmomi import VmomiSupport, vim

from vebus.config import VCenterEndpoint
from vebus.errors import (
    VCenterCertificateError,
    VCenterConnectionError,
    VCenterLoginError,
)
from vebus.vsphere._tls import read_password, ssl_context, tls_notice

__all__ = ["HTTP_TIMEOUT", "Session", "connect"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: seconds one HTTP request to vCenter may take (connect, and each read)
HTTP_TIMEOUT = 60.0
#: seconds an idle pooled HTTP connection is kept (pyvmomi's default is 900)
IDLE_CONNECTION_TIMEOUT = 30


class Session:
    """One logged-in session with the vCenter of `endpoint`, logged in on first use.

    `where` names the config block in messages and logs (`vcenters[vc01]`,
    `routes[tag-vms].sink`). `notice`: log what the TLS setting exposes (`insecure: true`,
    plain HTTP) now."""

    def __init__(
        self,
        endpoint: VCenterEndpoint,
        *,
        where: str,
        timeout: float = HTTP_TIMEOUT,
        notice: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.where = where
        self.timeout = timeout
        #: about.apiVersion and about.fullName of the last login
        self.api_version = ""
        self.full_name = ""
        #: logins done (the first one included)
        self.logins = 0
        self._si: Any = None
        self._lock = threading.Lock()
        said = tls_notice(endpoint, where) if notice else None
        if said is not None:
            log.log(*said)

    @property
    def si(self) -> Any:
        """The logged-in ServiceInstance (logging in when there is none)."""
        with self._lock:
            if self._si is None:
                self._login_locked()
            return self._si

    @property
    def current(self) -> Any:
        """The ServiceInstance of the last login, or None (never logs in)."""
        return self._si

    @property
    def logged_in(self) -> bool:
        """True while the session holds a ServiceInstance (it may have expired on vCenter)."""
        return self._si is not None

    def login(self) -> Any:
        """Log in anew (ending the current session first); the ServiceInstance."""
        with self._lock:
            self._logout_locked()
            self._login_locked()
            return self._si

    def logout(self) -> None:
        """Log out, ignoring a session or connection that is already gone."""
        with self._lock:
            self._logout_locked()

    def run(self, fn: Callable[[Any], R]) -> R:
        """`fn(si)`; when vCenter says the session is no longer valid, log in again once and
        call `fn` again (a second NotAuthenticated is raised)."""
        si = self.si
        try:
            return fn(si)
        except vim.fault.NotAuthenticated:
            log.info("%s: the vCenter session expired or was ended; logging in again", self.where)
        return fn(self.relogin(si))

    def relogin(self, stale: Any) -> Any:
        """Log in again if the session is still `stale` (another thread may have done it);
        the current ServiceInstance."""
        with self._lock:
            if self._si is stale or self._si is None:
                self._logout_locked()
                self._login_locked()
            return self._si

    def is_valid(self) -> bool:
        """Ask vCenter whether the session is still logged in (one call)."""
        si = self._si
        if si is None:
            return False
        try:
            return si.content.sessionManager.currentSession is not None
        except vim.fault.NotAuthenticated:
            return False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.logout()

    # ---------------------------------------------------------------- under the lock

    def _login_locked(self) -> None:
        ep = self.endpoint
        context = ssl_context(ep, self.where)
        password = read_password(ep, self.where)
        self._si = connect(ep, password, context, self.timeout, self.where)
        self.logins += 1
        about = self._si.content.about
        self.api_version, self.full_name = str(about.apiVersion), str(about.fullName)

    def _logout_locked(self) -> None:
        si, self._si = self._si, None
        if si is None:
            return
        try:
            pyvim_connect.Disconnect(si)
        except Exception as e:  # the session may be gone with the server
            log.debug("%s: logging out failed: %r", self.where, e)


def connect(
    endpoint: VCenterEndpoint, password: str, context: ssl.SSLContext, timeout: float, where: str
) -> Any:
    """Log in to `endpoint` (blocking, every request bounded by `timeout`); the
    ServiceInstance. Raises vebus.errors VCenter* classes."""
    url = endpoint.url
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = parts.path.rstrip("/") or "/sdk"
    try:
        version = _api_version(host, port, path, https, context, timeout, f"{where}: {url}")
        if version is None:
            raise VCenterConnectionError(
                f"{where}: {url}: speaks none of the vSphere API versions pyvmomi knows "
                "(not a vCenter SDK endpoint?)"
            )
        return pyvim_connect.Connect(
            host=host,
            port=port if https else -port,  # pyvmomi: a negative port means plain HTTP
            user=endpoint.username,
            pwd=password,
            service="hostd",
            adapter="SOAP",
            version=version,
            path=path,
            sslContext=context,
            httpConnectionTimeout=timeout,
            connectionPoolTimeout=IDLE_CONNECTION_TIMEOUT,
        )
    except vim.fault.InvalidLogin as e:
        what = "password_file" if endpoint.password_file else "password"
        raise VCenterLoginError(
            f"{where}: {url}: vCenter refused the login of {endpoint.username!r} "
            f"({getattr(e, 'msg', None) or 'InvalidLogin'}): check username and {what}"
        ) from None
    except ssl.SSLCertVerificationError as e:
        raise VCenterCertificateError(
            f"{where}: {url}: vCenter's TLS certificate is not trusted: {e} (set ca_file to "
            "the CA that signed it, or insecure: true for a lab)"
        ) from e
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, TLS
        raise VCenterConnectionError(f"{where}: {url}: cannot connect: {e!r}") from e


def _api_version(
    host: str,
    port: int,
    path: str,
    https: bool,
    context: ssl.SSLContext,
    timeout: float,
    label: str,
) -> str | None:
    """The newest API version pyvmomi knows that the server lists in vimServiceVersions.xml
    (what SmartConnect picks), or None; the request is bounded by `timeout`."""
    conn: http.client.HTTPConnection
    if https:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", f"{path}/vimServiceVersions.xml")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise VCenterConnectionError(
            f"{label}: {path}/vimServiceVersions.xml answered HTTP {response.status} "
            f"{response.reason} (not a vSphere SDK endpoint, or not ready yet)"
        )
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise VCenterConnectionError(
            f"{label}: {path}/vimServiceVersions.xml is not XML ({e})"
        ) from None
    offered = {
        (v.text or "").strip()
        for ns in root.iter("namespace")
        for v in [*ns.findall("version"), *ns.findall("priorVersions/version")]
    }
    for version in VmomiSupport.GetServiceVersions("vim25"):
        if VmomiSupport.versionIdMap.get(version) in offered:
            return str(version)
    return None
