"""Replays and purges through the deadletter service's HTTP API (docs/deadletters.md).

The console reads dead letters itself (`vebus.bus.dlq`, the code `vebus dlq` uses) but
never changes them: replay jobs (their progress, their take-over when a replica dies) and
purges are the deadletter service's, asked for with its token (`deadletter.api.token`)
and the signed-in operator as `by`, which the job records and the service logs.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from vebus.errors import VebusError

__all__ = ["DeadletterApi", "DeadletterApiError"]


class DeadletterApiError(VebusError):
    """The deadletter API refused a request or could not be reached; says which."""


class DeadletterApi:
    """A client of one deadletter API (any replica: jobs live in NATS KV)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token or ""

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        url = f"{self._base}{path}"
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as r:
                doc = await r.json(content_type=None) if r.content_length != 0 else None
                if r.status >= 400:
                    message = doc.get("error") if isinstance(doc, dict) else r.reason
                    if r.status == 401:
                        message = (
                            "the deadletter API refused the console's token: "
                            "deadletter.api.token must be the same for both services"
                        )
                    raise DeadletterApiError(f"deadletter API: {message} (HTTP {r.status})")
                return doc
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DeadletterApiError(
                f"the deadletter API at {self._base} did not answer ({e!r}): is the "
                "deadletter service running, and console.deadletter_url right?"
            ) from None

    async def replay(self, selection: dict[str, Any], *, by: str) -> dict[str, Any]:
        """Start a replay job; its record as the API gives it."""
        job: dict[str, Any] = await self._call("POST", "/v1/replays", {**selection, "by": by})
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("GET", f"/v1/replays/{job_id}")
        return job

    async def jobs(self) -> list[dict[str, Any]]:
        doc = await self._call("GET", "/v1/replays")
        return list(doc.get("items") or []) if isinstance(doc, dict) else []

    async def purge(self, selection: dict[str, Any], *, by: str) -> dict[str, Any]:
        """Purge the selected dead letters: {"purged": n, "gone": n}."""
        out: dict[str, Any] = await self._call(
            "POST", "/v1/dead-letters/purge", {**selection, "by": by}
        )
        return out
