"""vSphere tags through the vSphere Automation REST API (`/rest/com/vmware/cis/...`).

pyvmomi speaks SOAP, which has no tagging: tags live in the Automation API. This is the
small part of it that functions need, blocking (a worker runs one invocation at a time),
over the standard library's HTTP client with the same TLS policy as every vCenter session
(vebus.vsphere: system CAs or `ca_file`, `insecure` for a lab).

    tags = ctx.tags                                   # the event's vCenter
    tag = tags.tag("prod", category="env")            # created when missing
    tags.attach(tag, event.data["Vm"]["Vm"])          # a VEBA reference or a pyvmomi object
    tags.names_of(event.data["Vm"]["Vm"])             # ["env/prod", ...]

The `/rest` endpoints exist from vSphere 6.5 to 8 (and in govmomi's simulator); vSphere 7
added `/api` with the same operations. A session is made at first use (POST
`/rest/com/vmware/cis/session` with basic auth) and made again when vCenter answers 401.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from vebus.config import VCenterEndpoint
from vebus.errors import VCenterConnectionError, VCenterLoginError

__all__ = ["TagError", "Tagging", "object_id"]

#: seconds one REST call may take
TIMEOUT = 30.0
_SESSION_HEADER = "vmware-api-session-id"


class TagError(Exception):
    """The Automation API refused a tagging call (the message says which and why)."""


def object_id(obj: Any) -> dict[str, str]:
    """`{"id": "vm-56", "type": "VirtualMachine"}` from a VEBA reference (`{"Type", "Value"}`),
    a pyvmomi managed object, or such a dict already."""
    if isinstance(obj, dict):
        if "Type" in obj and "Value" in obj:
            return {"id": str(obj["Value"]), "type": str(obj["Type"])}
        if "id" in obj and "type" in obj:
            return {"id": str(obj["id"]), "type": str(obj["type"])}
        raise TagError(f"not an object reference: {obj!r}")
    moid = getattr(obj, "_moId", None)
    wsdl = getattr(obj, "_wsdlName", None)
    if moid and wsdl:
        return {"id": str(moid), "type": str(wsdl)}
    raise TagError(f"not an object reference: {obj!r}")


class Tagging:
    """Categories, tags and their attachments on one vCenter."""

    def __init__(
        self, endpoint: VCenterEndpoint, password: str, context: ssl.SSLContext, where: str
    ) -> None:
        parts = urlsplit(endpoint.url)
        self._base = f"{parts.scheme}://{parts.netloc}/rest"
        self._user = endpoint.username
        self._password = password
        self._context = context
        self._where = where
        self._session: str | None = None
        self._categories: dict[str, str] = {}
        self._tags: dict[tuple[str, str], str] = {}

    # ---------------------------------------------------------------- the calls

    def category(
        self,
        name: str,
        *,
        create: bool = True,
        cardinality: str = "MULTIPLE",
        associable_types: list[str] | None = None,
        description: str = "",
    ) -> str:
        """The id of category `name` (created when missing and `create`)."""
        if name in self._categories:
            return self._categories[name]
        for cid in self._call("GET", "/com/vmware/cis/tagging/category") or []:
            info = self._call("GET", f"/com/vmware/cis/tagging/category/id:{cid}")
            if info and info.get("name") == name:
                self._categories[name] = cid
                return str(cid)
        if not create:
            raise TagError(f"{self._where}: no tag category named {name!r}")
        spec = {
            "create_spec": {
                "name": name,
                "description": description,
                "cardinality": cardinality,
                "associable_types": associable_types or [],
            }
        }
        cid = str(self._call("POST", "/com/vmware/cis/tagging/category", spec))
        self._categories[name] = cid
        return cid

    def tag(self, name: str, *, category: str, create: bool = True, description: str = "") -> str:
        """The id of tag `name` in `category` (both created when missing and `create`)."""
        cid = self.category(category, create=create)
        if (cid, name) in self._tags:
            return self._tags[(cid, name)]
        for tid in self._call("GET", "/com/vmware/cis/tagging/tag") or []:
            info = self._call("GET", f"/com/vmware/cis/tagging/tag/id:{tid}")
            if info and info.get("name") == name and info.get("category_id") == cid:
                self._tags[(cid, name)] = str(tid)
                return str(tid)
        if not create:
            raise TagError(f"{self._where}: no tag {name!r} in category {category!r}")
        spec = {"create_spec": {"name": name, "description": description, "category_id": cid}}
        tid = str(self._call("POST", "/com/vmware/cis/tagging/tag", spec))
        self._tags[(cid, name)] = tid
        return tid

    def attach(self, tag_id: str, obj: Any) -> None:
        """Attach tag `tag_id` to `obj` (attaching it again changes nothing)."""
        self._call(
            "POST",
            f"/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=attach",
            {"object_id": object_id(obj)},
        )

    def detach(self, tag_id: str, obj: Any) -> None:
        """Take tag `tag_id` off `obj`."""
        self._call(
            "POST",
            f"/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=detach",
            {"object_id": object_id(obj)},
        )

    def attached(self, obj: Any) -> list[str]:
        """The ids of the tags on `obj`."""
        ids = self._call(
            "POST",
            "/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
            {"object_id": object_id(obj)},
        )
        return [str(i) for i in ids or []]

    def names_of(self, obj: Any) -> list[str]:
        """The tags on `obj` as `category/tag`, sorted."""
        out = []
        for tid in self.attached(obj):
            info = self._call("GET", f"/com/vmware/cis/tagging/tag/id:{tid}") or {}
            category = self._call("GET", f"/com/vmware/cis/tagging/category/id:"
                                         f"{info.get('category_id')}") or {}  # fmt: skip
            out.append(f"{category.get('name', '?')}/{info.get('name', '?')}")
        return sorted(out)

    def logout(self) -> None:
        """End the REST session."""
        if self._session is not None:
            with contextlib.suppress(TagError, VCenterConnectionError):
                self._request("DELETE", "/com/vmware/cis/session", None, self._session)
            self._session = None

    # ---------------------------------------------------------------- HTTP

    def _login(self) -> str:
        token = base64.b64encode(f"{self._user}:{self._password}".encode()).decode("ascii")
        request = urllib.request.Request(
            self._base + "/com/vmware/cis/session",
            method="POST",
            headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self._context) as r:
                body = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise VCenterLoginError(
                    f"{self._where}: the Automation API refused the login of {self._user!r}"
                ) from None
            raise TagError(f"{self._where}: REST login answered HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise VCenterConnectionError(f"{self._where}: REST login failed: {e!r}") from e
        session = str(body.get("value") or "")
        if not session:
            raise TagError(f"{self._where}: REST login gave no session id")
        return session

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = self._login()
        try:
            return self._request(method, path, body, self._session)
        except _Unauthorized:
            self._session = self._login()  # expired: once more with a new session
            return self._request(method, path, body, self._session)

    def _request(self, method: str, path: str, body: Any, session: str) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {_SESSION_HEADER: session, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self._base + path, data=data, method=method,
                                         headers=headers)  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self._context) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise _Unauthorized from None
            detail = e.read()[:500].decode("utf-8", "replace")
            raise TagError(f"{self._where}: {method} {path} answered HTTP {e.code}: {detail}") \
                from None  # fmt: skip
        except OSError as e:
            raise VCenterConnectionError(f"{self._where}: {method} {path} failed: {e!r}") from e
        if not raw:
            return None
        try:
            return json.loads(raw).get("value")
        except (ValueError, AttributeError):
            return None


class _Unauthorized(Exception):
    pass
