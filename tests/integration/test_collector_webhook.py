"""The webhook source in a real collector process: CloudEvents over HTTP into VEBUS_EVENTS;
bad requests get their reason and nothing is published."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from nats.aio.client import Client

from tests.support.stack import Stack
from tests.support.streams import stream_messages
from vebus.bus import signing
from vebus.local.embedded import free_port
from vebus.names import EVENTS_STREAM

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-tests"


async def test_cloudevents_over_http_are_published_and_bad_requests_are_not(
    stack: Stack, nc: Client
) -> None:
    port = free_port()
    stack.write_config(
        {
            "webhook": {
                "listen": f"127.0.0.1:{port}",
                "bearer_token": TOKEN,
                "username": "hook",
                "password": "hook-pass",
                "max_body": 4096,
            }
        }
    )
    await asyncio.to_thread(stack.start, "collector")
    url = f"http://127.0.0.1:{port}/webhook"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-pass").decode()}
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "42",
        "ce-source": "https://monitor.example.com",
        "ce-type": "com.example.disk.full",
        "ce-subject": "disk%20sda",  # percent-encoded, as the HTTP binding says
        "ce-region": "eu1",
        "Content-Type": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    async with aiohttp.ClientSession() as http:
        # binary mode, bearer token
        r = await http.post(url, data=b'{"used": 99}', headers={**binary, **bearer})
        assert r.status == 200, await r.text()
        assert (await r.json())["subject"] == "vebus.events.webhook.com_example_disk_full"
        # the sender retries: stored once
        r = await http.post(url, data=b'{"used": 99}', headers={**binary, **bearer})
        assert (await r.json())["duplicate"] is True
        # structured mode, basic auth
        doc = {
            "specversion": "1.0",
            "id": "a-1",
            "source": "urn:alerts",
            "type": "com.example.alert",
            "time": "2024-05-01T10:00:00Z",
            "priority": 3,
            "data": {"host": "esx01", "ok": False},
        }
        r = await http.post(
            url,
            data=json.dumps(doc),
            headers={**basic, "Content-Type": "application/cloudevents+json"},
        )
        assert r.status == 200, await r.text()

        # refused: authentication
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            r = await http.post(url, data=b"{}", headers={**binary, **headers})
            assert r.status == 401
            assert "Bearer" in r.headers["WWW-Authenticate"]
        # refused: malformed, each with its reason
        bad: list[tuple[dict[str, str], bytes, int, str]] = [
            ({k: v for k, v in binary.items() if k != "ce-id"}, b"{}", 400, "ce-id"),
            ({**binary, "ce-specversion": "0.3"}, b"{}", 400, "specversion"),
            ({"Content-Type": "application/json"}, b"{}", 400, "not a CloudEvent"),
            ({"Content-Type": "application/cloudevents+json"}, b"{nope", 400, "not valid JSON"),
            (
                {"Content-Type": "application/cloudevents+json"},
                json.dumps({**doc, "subject": "a\r\nNats-Msg-Id: x"}).encode(),
                400,
                "control characters",
            ),
            ({**binary, "ce-eventclass": "event"}, b"{}", 400, "reserved"),
            ({"Content-Type": "application/cloudevents-batch+json"}, b"[]", 415, "batch"),
            (binary, b"x" * 5000, 413, "larger than 4096"),
        ]
        for headers, body, status, reason in bad:
            r = await http.post(url, data=body, headers={**headers, **bearer})
            text = await r.text()
            assert r.status == status, (headers, text)
            assert reason in json.loads(text)["error"], text

    msgs = await stream_messages(nc, EVENTS_STREAM, "vebus.events.webhook.>")
    assert len(msgs) == 2, "one per accepted event; nothing for the refused requests"
    first, second = msgs
    h = first.headers or {}
    assert h["Nats-Msg-Id"] == "webhook:https://monitor.example.com:42"
    assert h["ce-id"] == "42"
    assert h["ce-source"] == "https://monitor.example.com"
    assert h["ce-subject"] == "disk sda"
    assert h["ce-region"] == "eu1"
    assert h["content-type"] == "application/json"
    assert h["traceparent"].startswith("00-0af7651916cd43dd")
    assert "ce-eventclass" not in h
    assert first.data == b'{"used": 99}'
    h2 = second.headers or {}
    assert second.subject == "vebus.events.webhook.com_example_alert"
    assert h2["ce-priority"] == "3"
    assert h2["ce-time"] == "2024-05-01T10:00:00Z"
    assert json.loads(second.data or b"") == {"host": "esx01", "ok": False}


async def test_signed_requests_with_a_timestamp_and_a_per_client_rate_limit(
    stack: Stack, nc: Client
) -> None:
    """`hmac` checks the signature a webhook sink with `timestamp: true` makes (signed by
    the sink's own code here), refuses a stale or altered one, and stores a replayed one
    once; `rate_limit` answers 429 to the client over it, stores nothing for it, and lets
    another client through."""
    import time

    from vebus.config import HmacAuth
    from vebus_dispatcher.sinks.httpclient import Authenticator

    secret = "hook-secret-for-tests"
    port = free_port()
    stack.write_config(
        {
            "webhook": {
                "listen": f"127.0.0.1:{port}",
                "hmac": {"secret": secret, "tolerance": "60s"},
                "rate_limit": {"requests": 5, "per": "10s"},
            }
        }
    )
    await asyncio.to_thread(stack.start, "collector")
    url = f"http://127.0.0.1:{port}/webhook"
    signer = Authenticator(HmacAuth(secret=secret, timestamp=True))

    def event(n: int) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"specversion": "1.0", "id": f"s{n}", "source": "https://signer",
                           "type": "com.example.signed", "data": {"n": n}}).encode()  # fmt: skip
        return body, {"Content-Type": "application/cloudevents+json", **signer.headers(body)}

    async with aiohttp.ClientSession() as http:
        body, headers = event(1)
        r = await http.post(url, data=body, headers=headers)
        assert r.status == 200, await r.text()
        # the same captured request again: accepted within the tolerance, stored once
        r = await http.post(url, data=body, headers=headers)
        assert (await r.json())["duplicate"] is True
        # altered body, no signature, a stale timestamp, a time that is not a time
        r = await http.post(url, data=body.replace(b'"n": 1', b'"n": 9'), headers=headers)
        assert r.status == 401
        assert "does not match" in (await r.json())["error"]
        r = await http.post(url, data=body, headers={"Content-Type": headers["Content-Type"]})
        assert r.status == 401
        old = str(int(time.time()) - 3600)
        stale = {**headers, "X-Vebus-Timestamp": old,
                 "X-Vebus-Signature-256": signing.sign(secret, body, old)}  # fmt: skip
        r = await http.post(url, data=body, headers=stale)
        assert r.status == 401
        assert "old" in (await r.json())["error"]
        # 5 requests per 10 s per client: the 5 above are all this client may send
        body, headers = event(2)
        r = await http.post(url, data=body, headers=headers)
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
    # another client address is not held back by the first one's limit
    local = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=local) as other:
        r = await other.post(url, data=body, headers=headers)
        assert r.status == 200, await r.text()

    stored = await stream_messages(nc, EVENTS_STREAM, "vebus.events.webhook.>")
    assert sorted(json.loads(m.data or b"{}")["n"] for m in stored) == [1, 2]
    # (the 429 stored nothing; the second client's request was stored)
