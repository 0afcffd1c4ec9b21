"""The console over HTTP against real nats-server and the deadletter service: who may do
what (401, 403, cross-site requests), secrets never on a page, route changes through the
route store (a stale revision refused), and the history search and export."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client

from tests.conftest import NatsServer
from tests.support.console import (
    DLQ_TOKEN,
    OPERATOR,
    OPERATOR_PASSWORD,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    console_section,
    csrf_of,
)
from tests.support.dispatcher import event
from tests.support.stack import Stack
from vebus import names
from vebus.bus.cloudevent import to_headers
from vebus.bus.publish import OutgoingMessage, publish_all
from vebus.local.embedded import free_port
from vebus.routing.store import open_route_store

pytestmark = pytest.mark.integration

VEBUS = str(Path(sys.executable).parent / "vebus")
SLACK_SECRET = "T0000/B0000/slack-secret-path"
BEARER_SECRET = "bearer-secret-value"


def _config(stack: Stack, dlq_port: int, console_port: int) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "vm-off",
                "match": {"type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}]},
                "sink": {
                    "kind": "webhook",
                    "url": "http://127.0.0.1:9/hook",
                    "headers": {"Authorization": f"Bearer {BEARER_SECRET}"},
                },
            },
            {
                "name": "chat",
                "sink": {
                    "kind": "slack",
                    "url": f"https://hooks.slack.com/services/{SLACK_SECRET}",
                },
            },
        ],
        "deadletter": {"api": {"listen": f"127.0.0.1:{dlq_port}", "token": DLQ_TOKEN}},
        "console": console_section(f"127.0.0.1:{console_port}", f"http://127.0.0.1:{dlq_port}"),
    }


@pytest.fixture
async def console(stack: Stack) -> str:
    dlq_port, port = free_port(), free_port()
    stack.write_config(_config(stack, dlq_port, port))
    await asyncio.to_thread(stack.start, "deadletter", "console")
    return f"http://127.0.0.1:{port}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _sign_in(http: aiohttp.ClientSession, base: str) -> str:
    """Sign in as the operator with the password; the CSRF token of the session."""
    async with http.post(
        f"{base}/login",
        data={"user": OPERATOR, "password": OPERATOR_PASSWORD, "next": "/routes"},
        headers={"Origin": base},
    ) as r:
        assert r.status == 200, await r.text()  # followed the 303 to /routes
        return csrf_of(await r.text())


STATE_CHANGING = [
    ("/routes/vm-off/pause", {}),
    ("/routes/vm-off/resume", {}),
    ("/routes/apply", {"text": "routes: []", "revision": "0"}),
    ("/deadletters/replay", {"scope": "all"}),
    ("/deadletters/purge", {"scope": "all", "confirm": "yes"}),
]


async def test_who_may_do_what(console: str, stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        # no credentials: a browser is sent to sign in, a program gets 401
        async with http.get(
            f"{console}/routes", headers={"Accept": "text/html"}, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/login?next=")
        async with http.get(f"{console}/routes") as r:
            assert r.status == 401
        # a wrong token: 401 for reading and for changing
        for method, path in (("GET", "/routes"), ("POST", "/routes/vm-off/pause")):
            async with http.request(method, console + path, headers=_bearer("wrong")) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        # a viewer reads every page, tries events, and is refused every change
        for path in ("/live", "/history", "/routes", "/routes/vm-off", "/deadletters", "/status"):
            async with http.get(console + path, headers=_bearer(VIEWER_TOKEN)) as r:
                assert r.status == 200, path
        for path, form in STATE_CHANGING:
            async with http.post(console + path, data=form, headers=_bearer(VIEWER_TOKEN)) as r:
                assert r.status == 403, path
                assert "operator role" in (await r.json())["error"]
        sample = json.dumps(json.loads(event(1).data))  # data only: not a CloudEvent
        async with http.post(
            f"{console}/routes/vm-off/try", data={"event": sample}, headers=_bearer(VIEWER_TOKEN)
        ) as r:
            assert r.status == 200
            assert "event: " in await r.text()  # what is wrong with it, on the page
    # a signed-in operator: the cookie alone does not change anything (CSRF token and Origin)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = await _sign_in(http, console)
        pause = f"{console}/routes/vm-off/pause"
        async with http.post(pause, headers={"Origin": console}, allow_redirects=False) as r:
            assert r.status == 403  # no CSRF token
        async with http.post(
            pause,
            data={"csrf": csrf},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403  # another site
        async with http.post(
            pause, data={"csrf": csrf}, headers={"Origin": console}, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()
    listing = subprocess.run(
        [VEBUS, "routes", "list", "--config", str(stack.config_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "PAUSED since" in listing.stdout
    assert f"by {OPERATOR} (console)" in listing.stdout, listing.stdout


async def test_no_secret_reaches_a_page(console: str) -> None:
    async with aiohttp.ClientSession(headers=_bearer(OPERATOR_TOKEN)) as http:
        pages = ["/routes", "/routes/edit", "/routes/edit?route=chat", "/routes/vm-off", "/status"]
        for path in pages:
            async with http.get(console + path) as r:
                text = await r.text()
                assert r.status == 200, path
                assert SLACK_SECRET not in text, path
                assert BEARER_SECRET not in text, path
                assert DLQ_TOKEN not in text, path
                assert "&lt;redacted&gt;" in text or path == "/status", path


async def test_apply_validates_keeps_secrets_and_refuses_a_stale_revision(
    console: str, nc: Client
) -> None:
    store = await open_route_store(nc.jetstream(), replicas=1)
    async with aiohttp.ClientSession(headers=_bearer(OPERATOR_TOKEN)) as http:
        async with http.get(f"{console}/routes/edit") as r:
            page = await r.text()
        assert 'name="revision" value="0"' in page
        text = page.split('class="code">', 1)[1].split("</textarea>", 1)[0]
        import html

        edited = html.unescape(text).replace("http://127.0.0.1:9/hook", "http://127.0.0.1:9/new")
        bad = edited.replace("kind: slack", "kind: slak")
        async with http.post(f"{console}/routes/apply", data={"text": bad, "revision": "0"}) as r:
            assert r.status == 400
            assert "routes[1].sink.kind" in await r.text()
        assert await store.get() is None  # nothing stored
        async with http.post(
            f"{console}/routes/apply", data={"text": edited, "revision": "0"}, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()
        stored = await store.get()
        assert stored is not None
        route_set, revision = stored
        assert route_set.applied_by == f"{OPERATOR} (console)"
        assert route_set.routes[0]["sink"]["url"] == "http://127.0.0.1:9/new"
        # the redacted secrets were put back, not stored as <redacted>
        assert route_set.routes[0]["sink"]["headers"]["Authorization"] == f"Bearer {BEARER_SECRET}"
        assert SLACK_SECRET in route_set.routes[1]["sink"]["url"]
        # someone else applies meanwhile: the page's revision is stale, nothing is written
        await store.put(route_set.routes, source="elsewhere", by="bob@host", last=revision)
        async with http.post(
            f"{console}/routes/apply", data={"text": edited, "revision": str(revision)}
        ) as r:
            assert r.status == 409
            assert "someone applied routes meanwhile" in await r.text()
        after = await store.get()
        assert after is not None
        assert after[0].applied_by == "bob@host"


def _history_events() -> list[OutgoingMessage]:
    out = []
    for i in range(300):
        vc = ("vc01", "vc02")[i % 2]
        kind = ("VmPoweredOffEvent", "VmPoweredOnEvent", "UserLoginSessionEvent")[i % 3]
        data = {
            "Key": i,
            "UserName": f"VSPHERE.LOCAL\\user{i % 7}",
            "Vm": {"Name": f"web-{i % 11:02d}"},
            "FullFormattedMessage": f"event {i}",
        }
        ev = event(i, type=f"com.vmware.vsphere.{kind}.v0", subject=kind,
                   data=json.dumps(data).encode())  # fmt: skip
        headers = to_headers(ev, {names.MSG_ID: f"{vc}:1:{i}"})
        out.append(OutgoingMessage(names.event_subject(vc, kind), ev.data, headers))
    return out


async def test_history_search_and_export(console: str, nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await publish_all(js, _history_events())
    base = f"{console}/history"
    async with aiohttp.ClientSession(headers=_bearer(VIEWER_TOKEN)) as http:

        async def rows(**params: str) -> list[str]:
            async with http.get(base, params=params) as r:
                assert r.status == 200
                text = await r.text()
            return [x for x in text.splitlines() if x.strip().startswith("<tr><td><a href=")]

        every = await rows(limit="500")
        assert len(every) == 300
        off = await rows(vcenter="vc01", type="VmPoweredOffEvent", limit="500")
        assert len(off) == 50  # i % 6 == 0
        assert all("VmPoweredOffEvent" in r and "<td>vc01</td>" in r for r in off)
        full = await rows(type="com.vmware.vsphere.VmPoweredOffEvent.v0", limit="500")
        assert len(full) == 100
        by_user = await rows(user="user3", limit="500")
        assert len(by_user) == len([i for i in range(300) if i % 7 == 3])
        by_object = await rows(object="WEB-05", limit="500")
        assert len(by_object) == len([i for i in range(300) if i % 11 == 5])
        # pages: 50, then the next page continues after the last row
        async with http.get(base, params={"limit": "50"}) as r:
            first = await r.text()
        assert "Next page" in first
        nxt = first.split('class="button" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        async with http.get(console + nxt) as r:
            second = await r.text()
        assert second.count("<tr><td><a href=") == 50
        assert 'href="/events/51"' in second
        # export: one CloudEvent a line, each accepted by `vebus routes test`
        async with http.get(f"{base}/export", params={"type": "VmPoweredOnEvent"}) as r:
            assert r.status == 200
            assert "attachment" in r.headers["Content-Disposition"]
            lines = (await r.text()).splitlines()
    assert len(lines) == 100
    test = subprocess.run(
        [VEBUS, "routes", "test", "--event", "-", "--pattern",
         '{"type": ["com.vmware.vsphere.VmPoweredOnEvent.v0"]}'],
        input=lines[0], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr


async def test_explain_and_event_page(console: str, nc: Client, nats_server: NatsServer) -> None:
    js = nc.jetstream()
    await publish_all(js, _history_events()[:3])
    async with aiohttp.ClientSession(headers=_bearer(VIEWER_TOKEN)) as http:
        async with http.get(f"{console}/events/1") as r:
            page = await r.text()
        assert "matched: route vm-off" in page
        assert "no match: route chat" not in page  # chat has no match: it takes every event
        assert "matched: route chat has no match, so it takes every event" in page
        async with http.get(f"{console}/events/2.json") as r:
            doc = await r.json(content_type=None)
        assert doc["type"] == "com.vmware.vsphere.VmPoweredOnEvent.v0"
        async with http.post(f"{console}/api/explain", data=json.dumps(doc)) as r:
            routes = (await r.json())["routes"]
        assert [x["matched"] for x in routes] == [False, True]
        assert routes[0]["lines"][0] == "no match: route vm-off"


async def _dead_letters(js: Any, n: int) -> None:
    from vebus.bus.dlq import publish_dead_letter
    from vebus.errors import ErrorCode, Exhausted

    for i in range(n):
        ev = event(i)
        await publish_dead_letter(
            js, route="vm-off", sink="webhook", code=ErrorCode.HTTP_4XX, error="refused",
            headers=to_headers(ev, {names.MSG_ID: f"vc01:1:{i}:vm-off"}), body=ev.data,
            attempts=1, exhausted=Exhausted.NOT_RETRYABLE,
        )  # fmt: skip


async def test_purge_asks_first_then_goes_through_the_deadletter_api(
    console: str, nc: Client
) -> None:
    js = nc.jetstream()
    await _dead_letters(js, 3)
    async with aiohttp.ClientSession(headers=_bearer(OPERATOR_TOKEN)) as http:
        async with http.get(f"{console}/deadletters/2") as r:
            page = await r.text()
        assert "refused" in page
        assert "&#34;specversion&#34;: &#34;1.0&#34;" in page  # the event, as JSON
        form = {"scope": "ids", "id": "2"}
        async with http.post(f"{console}/deadletters/purge", data=form) as r:
            confirm = await r.text()
        assert "Purge 1 dead letter(s)?" in confirm
        assert (await js.stream_info(names.DLQ_STREAM)).state.messages == 3  # not yet
        async with http.post(
            f"{console}/deadletters/purge", data={**form, "confirm": "yes"}, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert "purged%201" in r.headers["Location"]
        assert (await js.stream_info(names.DLQ_STREAM)).state.messages == 2
        async with http.post(
            f"{console}/deadletters/purge",
            data={"scope": "filter", "route": "vm-off", "confirm": "yes"},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
        assert (await js.stream_info(names.DLQ_STREAM)).state.messages == 0


async def test_https_when_given_a_certificate(stack: Stack, tmp_path: Path) -> None:
    import ssl

    from tests.support.sink import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    dlq_port, port = free_port(), free_port()
    config = _config(stack, dlq_port, port)
    config["console"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    stack.write_config(config)
    await asyncio.to_thread(stack.start, "console")
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(
            f"https://127.0.0.1:{port}/login",
            data={"user": OPERATOR, "password": OPERATOR_PASSWORD},
            headers={"Origin": f"https://127.0.0.1:{port}"},
            ssl=context,
            allow_redirects=False,
        ) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{port}/live"):
                pass
