"""The email sink against aiosmtpd on loopback: STARTTLS required, login required."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from nats.aio.client import Client

from tests.support.dispatcher import (
    event,
    eventually,
    inject,
    one_dead_letter,
    route,
    route_settled,
    start_dispatcher,
)
from tests.support.sink import self_signed_cert
from tests.support.stack import Stack
from vebus.local.embedded import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "vebus", "smtp-s3cret"


@dataclass
class Mailbox:
    """What the SMTP server accepted: (envelope sender, recipients, parsed message)."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class Smtp:
    port: int
    ca_file: Path
    mailbox: Mailbox


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Smtp]:
    import ssl

    cert, key = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    yield Smtp(port, cert, mailbox)
    controller.stop()


async def test_an_email_per_event_over_starttls_with_login(
    stack: Stack, nc: Client, smtp: Smtp
) -> None:
    def sink(password: str) -> dict[str, Any]:
        return {
            "kind": "email",
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "starttls",
            "username": USER,
            "password": password,
            "ca_file": str(smtp.ca_file),
            "from": "vebus@example.com",
            "to": ["ops@example.com", "oncall@example.com"],
            "subject": "[vebus] {{ data.Vm.Name }}: {{ subject }}",
            "body": "{{ data.FullFormattedMessage }}\nby {{ data.UserName }}\nid {{ id }}\n",
        }

    js = await start_dispatcher(
        stack,
        nc,
        [route("mail", sink=sink(PASSWORD)), route("badlogin", sink=sink("wrong"), max_attempts=5)],
    )
    await inject(js, "mail", event(4))
    await inject(js, "badlogin", event(5))

    async def delivered() -> bool | None:
        return True if smtp.mailbox.messages else None

    await eventually(delivered, "an e-mail", stack)
    await eventually(route_settled(js, "mail"), "the route emptied", stack)
    ((sender, rcpts, msg),) = smtp.mailbox.messages
    assert sender == "vebus@example.com"
    assert rcpts == ["ops@example.com", "oncall@example.com"]
    assert msg["Subject"] == "[vebus] test-4: VmPoweredOffEvent"
    assert msg["To"] == "ops@example.com, oncall@example.com"
    assert msg["Message-ID"].endswith("@vebus>")
    body = msg.get_content().replace("\r\n", "\n")  # CRLF on the wire
    assert body == "test-4 on host-1 is powered off\nby VSPHERE.LOCAL\\Administrator\nid 4\n"

    # a refused login (535) is permanent: one attempt, then a dead letter
    dl = await eventually(one_dead_letter(js, "badlogin"), "a dead letter", stack)
    assert (dl.code, dl.status, dl.attempts, dl.exhausted) == (
        "SINK_ERROR",
        535,
        1,
        "not_retryable",
    )
    await asyncio.sleep(0.3)
    assert len(smtp.mailbox.messages) == 1
