"""`ctx`, the second argument of a Python function: what VEBA users otherwise wire up by hand.

    def handle(event, ctx):
        vm = ctx.object(event.data["Vm"]["Vm"])      # a pyvmomi VirtualMachine, logged in
        ctx.log.info("tagging %s", vm.name)          # carries the event id and trace id
        ctx.tags.attach(ctx.tags.tag("new", category="lifecycle"), vm)
        token = ctx.secrets["SNOW_TOKEN"]            # the function's own secrets
        r = ctx.request("POST", url, json={...}, headers={"Authorization": token})
        return {"vm": vm.name}                       # a reply event, routed like any other

It lives in the worker process, one invocation at a time. vCenter sessions (pyvmomi, the
shared session helper: TLS policy, `password_file`, a new login when one expires) and
REST tagging sessions are kept by the worker between invocations, one per vCenter.
pyvmomi and the HTTP helpers block; in an `async def handle` that is fine too, since the
worker runs nothing else meanwhile (`ctx.http`, an aiohttp session, is there for code
that wants to await).
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import msgspec

from vebus import names
from vebus.config import VCenterEndpoint
from vebus_functions.event import Event

__all__ = ["Context", "HttpResponse", "VCenters"]

log = logging.getLogger("vebus_functions.function")

#: seconds an HTTP request of `ctx.request` may take unless told otherwise
HTTP_TIMEOUT = 30.0


class VCenters:
    """The worker's vCenter sessions and tagging clients, by `vcenters[]` name, made on
    first use and kept for the worker's life."""

    def __init__(self, function: str, endpoints: Mapping[str, VCenterEndpoint]) -> None:
        self.function = function
        self.endpoints = dict(endpoints)
        self._sessions: dict[str, Any] = {}
        self._tagging: dict[str, Any] = {}

    def _endpoint(self, name: str | None) -> tuple[str, VCenterEndpoint]:
        if not self.endpoints:
            raise LookupError(
                f"function {self.function} has no vCenter session: set `vcenter: true` (or "
                "an account of its own) in its declaration"
            )
        if name is None:
            if len(self.endpoints) == 1:
                return next(iter(self.endpoints.items()))
            raise LookupError(
                "the event names no vCenter of `vcenters:`; use ctx.vcenter_named(NAME) "
                f"(one of {', '.join(sorted(self.endpoints))})"
            )
        if name not in self.endpoints:
            raise LookupError(
                f"no vCenter named {name!r} (function {self.function} may use: "
                f"{', '.join(sorted(self.endpoints))})"
            )
        return name, self.endpoints[name]

    def session(self, name: str | None) -> Any:
        """The vebus.vsphere.Session of vCenter `name` (None: the only one)."""
        key, endpoint = self._endpoint(name)
        if key not in self._sessions:
            from vebus.vsphere import Session

            self._sessions[key] = Session(endpoint, where=f"function {self.function}: {key}")
        return self._sessions[key]

    def tagging(self, name: str | None) -> Any:
        """The tagging client of vCenter `name`."""
        key, endpoint = self._endpoint(name)
        if key not in self._tagging:
            from vebus.vsphere import read_password, ssl_context
            from vebus_functions.tagging import Tagging

            where = f"function {self.function}: {key}"
            self._tagging[key] = Tagging(
                endpoint, read_password(endpoint, where), ssl_context(endpoint, where), where
            )
        return self._tagging[key]

    def close(self) -> None:
        for session in self._sessions.values():
            session.logout()
        for tagging in self._tagging.values():
            tagging.logout()


class HttpResponse(msgspec.Struct, frozen=True):
    """The answer of `ctx.request`."""

    status: int
    headers: dict[str, str]
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Adapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['tag'] if self.extra else ''}] {msg}", kwargs


class Context:
    """What a Python function gets besides the event (see the module docstring)."""

    def __init__(
        self,
        *,
        function: str,
        event: Event,
        route: str,
        vcenter: str | None,
        traceparent: str | None,
        secrets: Mapping[str, str],
        vcenters: VCenters,
    ) -> None:
        #: the function's name and the route that delivered the event
        self.function = function
        self.route = route
        self.event = event
        #: the W3C traceparent of this invocation (sent along by `request`)
        self.traceparent = traceparent
        #: the function's secrets (`secrets:` of its declaration), by variable name
        self.secrets: Mapping[str, str] = secrets
        self._vcenter_name = vcenter
        self._vcenters = vcenters
        self._replies: list[bytes] = []
        self._http: Any = None
        trace = traceparent.split("-")[1] if traceparent and traceparent.count("-") >= 3 else "-"
        #: a logger whose lines carry the event id and trace id
        self.log: logging.LoggerAdapter = _Adapter(  # type: ignore[type-arg]
            log, {"tag": f"event {event.id} trace {trace}"}
        )

    @property
    def env(self) -> Mapping[str, str]:
        """The function's environment (`env:` and `secrets:`, plus PATH, HOME, ...)."""
        return os.environ

    # ---------------------------------------------------------------- vCenter

    @property
    def vcenter_name(self) -> str | None:
        """The `vcenters[]` name of the event's vCenter, when the event names one."""
        return self._vcenter_name

    @property
    def vcenter(self) -> Any:
        """A logged-in pyvmomi ServiceInstance of the event's vCenter."""
        return self._vcenters.session(self._vcenter_name).si

    def vcenter_named(self, name: str) -> Any:
        """A logged-in pyvmomi ServiceInstance of vCenter `name` (of `vcenters:`)."""
        return self._vcenters.session(name).si

    @property
    def content(self) -> Any:
        """The event's vCenter's ServiceContent (`ctx.content.viewManager`, ...)."""
        return self.vcenter.content

    def object(self, ref: Any, vcenter: str | None = None) -> Any:
        """The managed object a VEBA reference names (`{"Type": "VirtualMachine", "Value":
        "vm-56"}`, e.g. `event.data["Vm"]["Vm"]`), bound to the event's vCenter session."""
        from pyVmomi import vim

        if not isinstance(ref, dict) or "Type" not in ref or "Value" not in ref:
            raise ValueError(f"not an object reference ({{'Type': ..., 'Value': ...}}): {ref!r}")
        si = self.vcenter if vcenter is None else self.vcenter_named(vcenter)
        return getattr(vim, str(ref["Type"]))(str(ref["Value"]), si._stub)

    @property
    def tags(self) -> Any:
        """vSphere tagging on the event's vCenter (vebus_functions.tagging.Tagging)."""
        return self._vcenters.tagging(self._vcenter_name)

    def tags_of(self, vcenter: str) -> Any:
        """vSphere tagging on vCenter `vcenter`."""
        return self._vcenters.tagging(vcenter)

    # ---------------------------------------------------------------- HTTP

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> HttpResponse:
        """One HTTP request (blocking); the answer whatever its status (connection errors
        raise OSError). The invocation's `traceparent` goes along."""
        out = {k: v for k, v in (headers or {}).items()}
        body: bytes | None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            out.setdefault("Content-Type", "application/json")
        else:
            body = data.encode() if isinstance(data, str) else data
        if self.traceparent:
            out.setdefault(names.TRACEPARENT, self.traceparent)
        request = urllib.request.Request(url, data=body, method=method.upper(), headers=out)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return HttpResponse(r.status, dict(r.headers.items()), r.read())
        except urllib.error.HTTPError as e:
            return HttpResponse(e.code, dict(e.headers.items()), e.read())

    @property
    def http(self) -> Any:
        """An aiohttp ClientSession for `async def handle` (closed with the worker)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                headers={names.TRACEPARENT: self.traceparent} if self.traceparent else None,
            )
        return self._http

    # ---------------------------------------------------------------- replies

    def reply(
        self,
        data: Any = None,
        *,
        type: str | None = None,
        subject: str | None = None,
        extensions: Mapping[str, str] | None = None,
        datacontenttype: str | None = None,
    ) -> None:
        """Publish a reply event once the function returns successfully (on
        `vebus.events.functions.<function>`, routed like any event). `type` defaults to
        `com.vebus.function.<function>.v0`."""
        doc: dict[str, Any] = {"specversion": "1.0", "data": data}
        if type is not None:
            doc["type"] = type
        if subject is not None:
            doc["subject"] = subject
        if datacontenttype is not None:
            doc["datacontenttype"] = datacontenttype
        for key, value in (extensions or {}).items():
            doc[key] = value
        self._replies.append(jsonlib.dumps(doc, default=str).encode())

    def _take_replies(self) -> list[bytes]:
        out, self._replies = self._replies, []
        return out

    @property
    def _has_http(self) -> bool:
        return self._http is not None

    async def _aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
