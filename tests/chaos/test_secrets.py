"""Secrets stay secret: the topology runs with a NATS password, a sink bearer token, a
secret header, an HMAC key, the webhook source's token and the deadletter API's token, all
`${ENV}` references; events are delivered (the sink sees the token, and checks each HMAC
signature) and some fail into dead letters. Then every log file of the run, the config
`vebus up` wrote, every dead letter and `vebus dlq show` are searched for each secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from urllib.parse import quote

import pytest
from nats.js import JetStreamContext

from tests.chaos.conftest import Bus, MakeLedger, source
from tests.support.ledger import Producer, dead_letters, settle
from tests.support.sink import Received
from vebus import names

pytestmark = pytest.mark.chaos

ODD = {str(n) for n in range(1, 100, 2)}


def forms(secret: str) -> dict[str, bytes]:
    """The ways a secret could show: as is, URL-quoted, base64 (basic auth), repr'd."""
    raw = secret.encode()
    return {
        "plain": raw,
        "quoted": quote(secret, safe="").encode(),
        "base64": base64.b64encode(raw)[:-4] or raw,
        "repr": repr(secret).encode(),
    }


async def everything_stored(js: JetStreamContext) -> list[tuple[str, bytes]]:
    """Every dead letter, headers and body, as bytes to search."""
    out: list[tuple[str, bytes]] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(names.DLQ_STREAM, seq=seq, next=True,
                                   subject=names.DLQ_SUBJECTS)  # fmt: skip
        except Exception:
            return out
        blob = repr(raw.headers).encode() + b"\n" + (raw.data or b"")
        out.append((f"dead letter {raw.seq} ({raw.subject})", blob))
        seq = int(raw.seq or 0) + 1


async def test_secrets_are_never_logged_nor_stored(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger
) -> None:
    sink, signed = bus.sink("secrets"), bus.sink("signed")
    led = ledger("secrets: bearer token and secret header, every other event refused", sink)
    led_signed = ledger("secrets: HMAC-signed", signed)
    # the sink refuses every other event: those become dead letters (HTTP_5XX)
    sink.responder = lambda r: 500 if r.headers.get("ce-id", "-0").rsplit("-")[-1] in ODD else 200
    try:
        run = f"s{time.time_ns()}"
        await Producer(js, led, source=source("secrets"), prefix=run, count=60, rate=200).run()
        await Producer(js, led_signed, source=source("signed"), prefix=f"{run}-hmac", count=30,
                       rate=200).run()  # fmt: skip
        await settle(led, js, sink, "secrets", timeout=30)
        await settle(led_signed, js, signed, "signed", timeout=30)
    finally:
        sink.responder = None
    led.check(dead_letters=True)
    led_signed.check()
    assert led.dead_lettered == 30, led.report()

    # the secrets were used: the sink got them (else this test would prove nothing)
    token, header = bus.secrets["CHAOS_SINK_TOKEN"], bus.secrets["CHAOS_HEADER_SECRET"]
    assert {r.headers.get("Authorization") for r in sink.received} == {f"Bearer {token}"}
    assert {r.headers.get("X-Chaos-Key") for r in sink.received} == {header}
    key = bus.secrets["CHAOS_HMAC_SECRET"].encode()

    def valid(r: Received) -> bool:
        want = "sha256=" + hmac.new(key, r.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(r.headers.get("X-Vebus-Signature-256", ""), want)

    ours = [r for r in signed.received if r.headers.get("ce-id", "").startswith(run)]
    assert ours
    assert all(valid(r) for r in ours), "every HMAC signature checks out"
    assert all(key not in r.body and key.decode() not in str(r.headers) for r in ours)

    # ... and nowhere else
    one = (await dead_letters(js, "secrets"))[0]
    show = await asyncio.to_thread(bus.cli, "dlq", "show", str(one.seq), "--json")
    assert show.returncode == 0, show.stderr
    places: list[tuple[str, bytes]] = [
        *((f"log {name}", text) for name, text in bus.cluster.all_logs().items()),
        ("config written by vebus up", bus.cluster.effective_config.read_bytes()),
        ("`vebus dlq show --json`", (show.stdout + show.stderr).encode()),
        *await everything_stored(js),
    ]
    leaks = [
        f"{name} in {where} ({how})"
        for name, secret in bus.secrets.items()
        if name != "CHAOS_URL_SECRET"  # see the test below
        for how, needle in forms(secret).items()
        for where, blob in places
        if needle in blob
    ]
    assert not leaks, leaks
    led.note(f"searched {len(places)} logs and records for {len(bus.secrets) - 1} secrets")


async def test_a_secret_in_the_sink_url_is_not_logged(
    bus: Bus, js: JetStreamContext, ledger: MakeLedger
) -> None:
    sink = bus.sink("secret-url")
    led = ledger("secrets: the sink URL is the secret", sink)
    sink.status = 500
    try:
        run = f"u{time.time_ns()}"
        await Producer(js, led, source=source("secret-url"), prefix=run, count=3, rate=50).run()
        await settle(led, js, sink, "secret-url", timeout=30)
    finally:
        sink.status = 200
    assert led.dead_lettered == 3, led.report()
    secret = bus.secrets["CHAOS_URL_SECRET"]
    assert any(secret in r.path for r in sink.received), "the URL did carry the secret"
    dead = [d.error for d in await dead_letters(js, "secret-url")]
    logs = [n for n, text in bus.cluster.all_logs().items() if secret.encode() in text]
    assert not [e for e in dead if secret in e], dead[:1]
    assert not logs
