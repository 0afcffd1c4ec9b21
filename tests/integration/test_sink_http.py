"""The HTTP sinks against real loopback servers: webhook auth, and Slack, Teams, PagerDuty
and ServiceNow (through the http sink) fakes that check each payload's shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from tests.support.dispatcher import (
    dead_letters,
    event,
    eventually,
    inject,
    lower,
    one_dead_letter,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import (
    PAGERDUTY_KEY,
    SERVICENOW_PASSWORD,
    SERVICENOW_USER,
    RecordingSink,
    SaasFake,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def saas() -> AsyncIterator[SaasFake]:
    fake = await SaasFake().start()
    yield fake
    await fake.stop()


async def test_webhook_auth_bearer_basic_and_an_hmac_signature_of_the_body(
    stack: Stack, nc: Client, sink: RecordingSink
) -> None:
    def with_auth(name: str, auth: dict[str, str]) -> dict[str, object]:
        return route(name, sink={"kind": "webhook", "url": sink.url + "/" + name, "auth": auth})

    js = await start_dispatcher(
        stack,
        nc,
        [
            with_auth("bearer", {"kind": "bearer", "token": "t0ken"}),
            with_auth("basic", {"kind": "basic", "username": "fn", "password": "pw:1"}),
            with_auth("signed", {"kind": "hmac", "secret": "sh4red"}),
        ],
    )
    for name in ("bearer", "basic", "signed"):
        await inject(js, name, event(name))
    assert await sink.wait_for(lambda: len(sink.accepted) == 3), stack.logs()
    by_path = {r.path.rsplit("/", 1)[1]: r for r in sink.accepted}

    assert lower(by_path["bearer"].headers)["authorization"] == "Bearer t0ken"
    basic = lower(by_path["basic"].headers)["authorization"]
    assert base64.b64decode(basic.removeprefix("Basic ")) == b"fn:pw:1"
    signed = by_path["signed"]
    want = hmac.new(b"sh4red", signed.body, hashlib.sha256).hexdigest()
    assert lower(signed.headers)["x-vebus-signature-256"] == f"sha256={want}"
    assert json.loads(signed.body)["Key"] == "signed"  # the body itself is the event's data
    assert "authorization" not in lower(signed.headers)


async def test_slack_and_teams_get_the_routes_template_as_their_message(
    stack: Stack, nc: Client, saas: SaasFake
) -> None:
    text = "{{ data.Vm.Name }} powered off by {{ data.UserName }}"
    js = await start_dispatcher(
        stack,
        nc,
        [
            route("chat", sink={"kind": "slack", "url": saas.url("/services/T000/B000/slack"),
                                "text": text}),
            route("teams", sink={"kind": "teams", "url": saas.url("/workflows/teams"),
                                 "text": text, "title": "{{ subject }} in {{ source }}"}),
        ],
    )  # fmt: skip
    await inject(js, "chat", event(1))
    await inject(js, "teams", event(2))
    assert await saas.wait_for(lambda: saas.accepted["slack"] and saas.accepted["teams"]), (
        f"{saas.refused}\n{stack.logs()}"
    )
    assert saas.accepted["slack"] == [
        {"text": "test-1 powered off by VSPHERE.LOCAL\\Administrator"}
    ]
    (card,) = [a["content"] for a in saas.accepted["teams"][0]["attachments"]]
    assert [b["text"] for b in card["body"]] == [
        "VmPoweredOffEvent in https://vc01.example.com/sdk",
        "test-2 powered off by VSPHERE.LOCAL\\Administrator",
    ]
    assert saas.refused == []


async def test_pagerduty_triggers_and_resolves_one_alert_by_its_dedup_key(
    stack: Stack, nc: Client, saas: SaasFake
) -> None:
    common = {
        "kind": "pagerduty",
        "routing_key": PAGERDUTY_KEY,
        "url": saas.url("/v2/enqueue"),
        "dedup_key": "{{ source }}/{{ data.Vm.Vm.Value }}",
    }
    js = await start_dispatcher(
        stack,
        nc,
        [
            route("page", sink={**common, "summary": "{{ data.FullFormattedMessage }}",
                                "severity": "{{ 'critical' if data.Key == 7 else 'info' }}",
                                "component": "{{ data.Vm.Name }}", "class": "{{ subject }}"}),
            route("unpage", sink={**common, "action": "resolve"}),
            route("wrongkey", sink={**common, "routing_key": "not-a-key"}, max_attempts=5),
        ],
    )  # fmt: skip
    await inject(js, "page", event(7))
    assert await saas.wait_for(lambda: len(saas.accepted["pagerduty"]) == 1), stack.logs()
    await inject(js, "unpage", event(7, id="7-cleared"))
    await inject(js, "wrongkey", event(8))
    assert await saas.wait_for(lambda: len(saas.accepted["pagerduty"]) == 2), stack.logs()

    trigger, resolve = saas.accepted["pagerduty"]
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "https://vc01.example.com/sdk/vm-7"
    payload = trigger["payload"]
    assert payload["summary"] == "test-7 on host-1 is powered off"
    assert payload["severity"] == "critical"
    assert payload["source"] == "https://vc01.example.com/sdk"
    assert (payload["component"], payload["class"]) == ("test-7", "VmPoweredOffEvent")
    assert payload["timestamp"] == "2024-05-01T10:11:12.345678Z"
    assert payload["custom_details"]["Vm"]["Name"] == "test-7"
    assert resolve == {
        "routing_key": PAGERDUTY_KEY,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
        "client": "vebus",
    }
    # PagerDuty refuses an unknown integration key with 400: permanent, one attempt
    dl = await eventually(one_dead_letter(js, "wrongkey"), "a dead letter", stack)
    assert (dl.code, dl.status, dl.attempts, dl.exhausted) == ("HTTP_4XX", 400, 1, "not_retryable")
    assert "routing_key" in dl.error


async def test_the_http_sink_opens_servicenow_incidents_from_a_body_template(
    stack: Stack, nc: Client, saas: SaasFake
) -> None:
    body = (
        '{"short_description": {{ data.FullFormattedMessage | tojson }}, '
        '"cmdb_ci": {{ data.Vm.Name | tojson }}, "caller_id": {{ data.UserName | tojson }}, '
        '"correlation_id": {{ id | tojson }}}'
    )
    sink = {
        "kind": "http",
        "method": "POST",
        "url": saas.url("/api/now/table/{{ 'incident' }}"),
        "body": body,
        "headers": {"Accept": "application/json"},
        "auth": {"kind": "basic", "username": SERVICENOW_USER, "password": SERVICENOW_PASSWORD},
    }
    js = await start_dispatcher(stack, nc, [route("snow", sink=sink)])
    await inject(js, "snow", event(3))
    assert await saas.wait_for(lambda: len(saas.accepted["servicenow"]) == 1), (
        f"{saas.refused}\n{stack.logs()}"
    )
    assert saas.accepted["servicenow"] == [
        {
            "short_description": "test-3 on host-1 is powered off",
            "cmdb_ci": "test-3",
            "caller_id": "VSPHERE.LOCAL\\Administrator",
            "correlation_id": "3",
        }
    ]
    await eventually(route_settled(js, "snow"), "the route emptied", stack)
    assert await dead_letters(js, "snow") == []


async def test_a_template_that_fails_to_render_is_a_dead_letter_at_once(
    stack: Stack, nc: Client, saas: SaasFake
) -> None:
    js = await start_dispatcher(
        stack,
        nc,
        [
            route("broken", sink={"kind": "slack", "url": saas.url("/services/T000/B000/slack"),
                                  "text": "{{ data.Key // 0 }}"}, max_attempts=5),
            route("badsev", sink={"kind": "pagerduty", "routing_key": PAGERDUTY_KEY,
                                  "url": saas.url("/v2/enqueue"),
                                  "severity": "{{ data.UserName }}"}, max_attempts=5),
        ],
    )  # fmt: skip
    await inject(js, "broken", event(1))
    await inject(js, "badsev", event(2))
    for name in ("broken", "badsev"):
        dl = await eventually(one_dead_letter(js, name), f"a dead letter on {name}", stack)
        assert (dl.code, dl.attempts, dl.exhausted) == ("TEMPLATE_ERROR", 1, "not_retryable")
    assert saas.accepted == {"slack": [], "teams": [], "pagerduty": [], "servicenow": []}
    assert saas.refused == []  # nothing was sent
