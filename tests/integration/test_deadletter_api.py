"""The deadletter service's HTTP API as a client sees it, every response checked against the
OpenAPI document the service serves."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonschema
import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import CloudEvent, to_headers
from vebus.bus.dlq import (
    Selection,
    get_dead_letter,
    iter_dead_letters,
    publish_dead_letter,
    replay_msg_id,
)
from vebus.bus.publish import publish
from vebus.bus.streams import ensure_streams
from vebus.config import load_config
from vebus.errors import ErrorCode, Exhausted
from vebus.local.embedded import free_port
from vebus.names import MSG_ID
from vebus_deadletter.jobs import ReplayJob
from vebus_deadletter.state import StateStore

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-the-tests"
ROUTES = ("r1", "r2")


# ------------------------------------------------------------------------------ client


class OpenApiCheck:
    """Checks a response against the operation the OpenAPI document gives for it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._paths = sorted(
            (
                (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p)
                for p in document["paths"]
            ),
            key=lambda item: "{" in item[1],  # literal paths before templated ones
        )

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for pattern, template in self._paths:
            if pattern.match(path):
                ops = self.document["paths"][template]
                assert method.lower() in ops, f"{method} {template} is not documented"
                op: dict[str, Any] = ops[method.lower()]
                return op
        raise AssertionError(f"{path} is not documented")

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        op = self.operation(method, path)
        responses = op["responses"]
        assert str(status) in responses, f"{method} {path}: status {status} is not documented"
        content = responses[str(status)].get("content")
        if content is None:
            assert body is None, f"{method} {path} {status}: documented without a body"
            return
        schema = {**content["application/json"]["schema"], **self.document}
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(body)


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Api:
    """Calls the API over HTTP and checks every response against its OpenAPI document."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.openapi: OpenApiCheck | None = None

    async def __call__(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as resp:
            raw = await resp.read()
            doc = json.loads(raw) if raw else None
            if raw:
                assert resp.content_type == "application/json", raw
            reply = Reply(resp.status, doc, dict(resp.headers))
        if self.openapi is None:
            document = await self.session.get(self.base + "/openapi.json")
            self.openapi = OpenApiCheck(await document.json())
        self.openapi.check(method, path.split("?")[0], reply.status, reply.body)
        return reply


# ------------------------------------------------------------------------------ fixtures


def write_config(stack: Stack, port: int, token: str | None = "${VEBUS_DLQ_TOKEN}") -> None:
    api: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if token is not None:
        api["token"] = token
    stack.write_config(
        {
            "routes": [
                {"name": r, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/"}}
                for r in ROUTES
            ],
            "deadletter": {"api": api},
        }
    )


@pytest.fixture
async def api(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.setenv("VEBUS_DLQ_TOKEN", TOKEN)  # the service inherits the environment
    port = free_port()
    write_config(stack, port)
    await asyncio.to_thread(stack.start, "deadletter")
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{port}")
    assert stack.stop("deadletter") == 0, stack.logs()


@pytest.fixture
async def js(nc: Client, stack: Stack) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_streams(js, load_config(stack.config_path).stream_settings())
    return js


def event(key: int) -> CloudEvent:
    return CloudEvent(
        id=str(key),
        source="https://vc01.example.com/sdk",
        type="com.vmware.vsphere.VmPoweredOffEvent.v0",
        time="2025-01-02T03:04:05Z",
        data=json.dumps({"Key": key, "Vm": {"Name": f"vm-{key}"}}).encode(),
    )


async def store(
    js: JetStreamContext,
    key: int,
    *,
    route: str = "r1",
    code: ErrorCode = ErrorCode.HTTP_5XX,
) -> int:
    ev = event(key)
    await publish_dead_letter(
        js,
        route=route,
        sink="webhook",
        code=code,
        error=f"http://127.0.0.1:9/ answered 503 for {key}",
        headers=to_headers(ev, {MSG_ID: f"vc01:1:{key}:{route}"}),
        body=ev.data,
        attempts=3,
        exhausted=Exhausted.MAX_ATTEMPTS,
        status=503 if code == ErrorCode.HTTP_5XX else None,
        first_attempt=dt.datetime(2025, 1, 2, 3, 4, 6, tzinfo=dt.UTC),
    )
    info = await js.stream_info(names.DLQ_STREAM)
    return int(info.state.last_seq)


async def dead_letter_ids(js: JetStreamContext) -> list[int]:
    return [dl.id async for dl in iter_dead_letters(js)]


async def route_messages(js: JetStreamContext, route: str) -> list[RawStreamMsg]:
    """Every message on the route, in order (VEBUS_ROUTES has no direct get)."""
    out: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                names.ROUTES_STREAM, seq=seq, subject=names.route_subject(route), next=True
            )
        except NotFoundError:
            return out
        out.append(raw)
        seq = int(raw.seq or 0) + 1


async def route_event_ids(js: JetStreamContext, nc: Client, route: str) -> list[str]:
    return [(m.headers or {})["ce-id"] for m in await route_messages(js, route)]


async def wait_job(api: Api, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await api("GET", f"/v1/replays/{job_id}")
        assert r.status == 200, r.body
        if r.body["state"] != "running" or asyncio.get_running_loop().time() > deadline:
            return dict(r.body)
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------ tests


async def test_the_openapi_document_is_valid_and_complete(api: Api) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    r = await api("GET", "/openapi.json")
    assert r.status == 200
    validator.validate(r.body)
    for template, ops in r.body["paths"].items():
        for method, op in ops.items():
            changes = method in ("post", "delete", "put", "patch")
            assert bool(op.get("security")) == changes, f"{method} {template}"
            if changes:
                assert {"401", "403"} <= set(op["responses"]), f"{method} {template}"


async def test_list_filter_page_show_and_stats(
    api: Api, js: JetStreamContext, stack: Stack
) -> None:
    first = await store(js, 101)
    await asyncio.sleep(1.1)
    cut = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.1)
    second = await store(js, 102, code=ErrorCode.POISON)
    third = await store(js, 103, route="r2", code=ErrorCode.TIMEOUT)

    r = await api("GET", "/v1/dead-letters")
    assert r.status == 200
    assert [i["id"] for i in r.body["items"]] == [first, second, third]
    assert r.body["next_after"] is None
    row = r.body["items"][0]
    assert (row["route"], row["sink"], row["code"], row["status"]) == (
        "r1",
        "webhook",
        "HTTP_5XX",
        503,
    )
    assert (row["attempts"], row["exhausted"], row["event_id"]) == (3, "max_attempts", "101")
    assert row["first_attempt"] == "2025-01-02T03:04:06Z"

    async def ids(query: str) -> list[int]:
        r = await api("GET", "/v1/dead-letters?" + query)
        assert r.status == 200, r.body
        return [i["id"] for i in r.body["items"]]

    assert await ids("route=r1") == [first, second]
    assert await ids("code=POISON") == [second]
    assert await ids("code=timeout") == [third]
    assert await ids("since=" + cut.isoformat().replace("+00:00", "Z")) == [second, third]
    assert await ids("until=" + cut.isoformat().replace("+00:00", "Z")) == [first]
    assert await ids("since=1h") == [first, second, third]
    assert await ids("route=r2&code=HTTP_5XX") == []

    page = await api("GET", "/v1/dead-letters?limit=2")
    assert [i["id"] for i in page.body["items"]] == [first, second]
    assert page.body["next_after"] == second
    rest = await api("GET", f"/v1/dead-letters?limit=2&after={second}")
    assert [i["id"] for i in rest.body["items"]] == [third]
    assert rest.body["next_after"] is None

    for bad in (
        "code=NOPE",
        "since=yesterday",
        "since=2025-01-02T03:04:05",
        "until=99999999999d",  # used to be a 500: OverflowError
        "limit=0",
        "after=x",
    ):
        r = await api("GET", "/v1/dead-letters?" + bad)
        assert r.status == 400, bad
        assert r.body["error"]

    shown = await api("GET", f"/v1/dead-letters/{first}")
    assert shown.status == 200
    assert shown.body["msg_id"] == "vc01:1:101:r1"
    assert shown.body["event"]["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
    assert shown.body["data"] == {"Key": 101, "Vm": {"Name": "vm-101"}}
    assert (await api("GET", "/v1/dead-letters/999")).status == 404
    assert (await api("GET", "/v1/dead-letters/abc")).status == 400

    stats = await api("GET", "/v1/stats")
    assert stats.body == {
        "total": 3,
        "routes": {
            "r1": {"total": 2, "codes": {"HTTP_5XX": 1, "POISON": 1}},
            "r2": {"total": 1, "codes": {"TIMEOUT": 1}},
        },
    }


async def test_changes_need_the_token(api: Api, js: JetStreamContext) -> None:
    ident = await store(js, 201)
    attempts = [
        ("POST", "/v1/replays", {"all": True}),
        ("POST", "/v1/dead-letters/purge", {"all": True}),
        ("DELETE", f"/v1/dead-letters/{ident}", None),
        ("DELETE", "/v1/replays/abc", None),
    ]
    for method, path, body in attempts:
        for token in (None, "wrong-token-of-some-length", TOKEN + "x"):
            r = await api(method, path, body, token=token)
            assert r.status == 401, (method, path, token, r.body)
            assert "Bearer" in r.body["error"]
    assert await dead_letter_ids(js) == [ident]
    # reading needs none
    assert (await api("GET", "/v1/dead-letters", token=None)).status == 200


async def test_replay_and_purge(api: Api, js: JetStreamContext, nc: Client) -> None:
    a, _ = await store(js, 301), await store(js, 302)
    c = await store(js, 303, route="r2", code=ErrorCode.TIMEOUT)

    r = await api("POST", "/v1/replays", {"route": "r1", "rate": 0})
    assert r.status == 202, r.body
    assert r.headers["Location"] == f"/v1/replays/{r.body['id']}"
    assert (r.body["total"], r.body["upto"], r.body["to_route"]) == (2, c, None)
    job = await wait_job(api, r.body["id"])
    assert (job["state"], job["replayed"], job["failed"], job["cursor"]) == ("done", 2, 0, c)

    assert await route_event_ids(js, nc, "r1") == ["301", "302"]
    [msg, _] = await route_messages(js, "r1")
    headers = msg.headers or {}
    assert headers[MSG_ID] == f"vc01:1:301:r1:replay:{a}"
    assert headers["ce-vebusreplay"].endswith("Z")
    assert not any(k.startswith("vebus-dlq-") for k in headers)
    assert await dead_letter_ids(js) == [c]

    unknown = await api("POST", "/v1/replays", {"ids": [c], "to_route": "nope"})
    assert unknown.status == 400
    assert "nope" in unknown.body["error"]
    bad_requests: list[dict[str, Any]] = [
        {},
        {"all": False},
        {"all": True, "route": "r1"},
        {"ids": []},
        {"rate": -1, "all": True},
        {"all": True, "bogus": 1},
        {"code": "NOPE"},
    ]
    for bad in bad_requests:
        refused = await api("POST", "/v1/replays", bad)
        assert refused.status == 400, (bad, refused.body)

    moved = await api("POST", "/v1/replays", {"ids": [c], "to_route": "r1"})
    assert (await wait_job(api, moved.body["id"]))["replayed"] == 1
    assert await route_event_ids(js, nc, "r1") == ["301", "302", "303"]
    assert await dead_letter_ids(js) == []

    jobs = await api("GET", "/v1/replays")
    assert [j["id"] for j in jobs.body["items"]] == [moved.body["id"], r.body["id"]]
    assert (await api("GET", "/v1/replays/nope")).status == 404

    d, e, f = (await store(js, 401), await store(js, 402, code=ErrorCode.TIMEOUT),
               await store(js, 403, code=ErrorCode.TIMEOUT))  # fmt: skip
    gone = await api("DELETE", f"/v1/dead-letters/{d}")
    assert (gone.status, gone.body) == (204, None)
    assert (await api("DELETE", f"/v1/dead-letters/{d}")).status == 404
    assert (await api("POST", "/v1/dead-letters/purge", {})).status == 400
    purged = await api("POST", "/v1/dead-letters/purge", {"code": "TIMEOUT"})
    assert purged.body == {"purged": 2, "gone": 0}
    assert await dead_letter_ids(js) == []
    assert e < f
    assert await route_event_ids(js, nc, "r1") == ["301", "302", "303"]  # purge sends nothing


async def test_a_cancelled_replay_stops(api: Api, js: JetStreamContext, nc: Client) -> None:
    for key in range(500, 520):
        await store(js, key)
    r = await api("POST", "/v1/replays", {"all": True, "rate": 4})
    assert r.status == 202
    await asyncio.sleep(0.6)
    cancelled = await api("DELETE", f"/v1/replays/{r.body['id']}")
    assert cancelled.status == 200
    assert cancelled.body["state"] == "cancelled"
    await asyncio.sleep(1.5)  # a runner that ignored it would have replayed 6 more by now
    sent = len(await route_event_ids(js, nc, "r1"))
    left = len(await dead_letter_ids(js))
    assert 1 <= sent <= 5
    assert sent + left == 20
    job = (await api("GET", f"/v1/replays/{r.body['id']}")).body
    assert job["state"] == "cancelled"
    again = await api("DELETE", f"/v1/replays/{r.body['id']}")
    assert again.body["state"] == "cancelled"


async def test_without_a_token_changes_are_refused(stack: Stack, nc: Client) -> None:
    port = free_port()
    write_config(stack, port, token=None)
    await asyncio.to_thread(stack.start, "deadletter")
    js = nc.jetstream()
    ident = await store(js, 601)
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{port}")
        r = await api("POST", "/v1/replays", {"all": True})
        assert r.status == 403
        assert "deadletter.api.token" in r.body["error"]
        assert (await api("GET", f"/v1/dead-letters/{ident}")).status == 200
    assert stack.stop("deadletter") == 0


async def test_a_job_whose_replica_died_is_finished_once(
    stack: Stack, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner died after publishing dead letter `a` but before deleting it: the replica
    that takes the job over publishes `a` again (dropped as a duplicate) and deletes it."""
    monkeypatch.setenv("VEBUS_DLQ_TOKEN", TOKEN)
    port = free_port()
    write_config(stack, port)
    js = nc.jetstream()
    await ensure_streams(js, load_config(stack.config_path).stream_settings())
    a, _, c = await store(js, 701), await store(js, 702), await store(js, 703)
    dl = await get_dead_letter(js, a)
    await publish(
        js,
        names.route_subject("r1"),
        dl.body,
        {**dl.headers, MSG_ID: replay_msg_id(dl), "ce-vebusreplay": "2025-01-01T00:00:00Z"},
    )
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)).isoformat()
    job = ReplayJob(
        id="left0behind0",
        state="running",
        created=old,
        selection=Selection(),
        upto=c,
        to_route=None,
        rate=0,
        total=3,
        owner="deadletter-gone",
        heartbeat=old,
    )
    states = await StateStore.open(js, replicas=1)
    await states.create(job.key(), msgspec.json.encode(job))

    await asyncio.to_thread(stack.start, "deadletter")
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{port}")
        done = await wait_job(api, job.id)
    assert done["state"] == "done", stack.logs()
    assert done["owner"] != "deadletter-gone"
    assert sorted(await route_event_ids(js, nc, "r1")) == ["701", "702", "703"]
    assert await dead_letter_ids(js) == []
    assert stack.stop("deadletter") == 0, stack.logs()
