"""The email sink: one e-mail per event over SMTP, with STARTTLS (or implicit TLS) and login.

smtplib runs on the sink's own threads, one connection per message, each bounded by the
route's `timeout`. Subject and body are templates; the Message-ID derives from the event's
source and id, so a duplicate (at-least-once) is recognisable as the same message.
At-least-once to every recipient the server accepts: the server's acceptance of the
message (250 after DATA) is success. 4xx answers, timeouts and broken connections are
retried; 5xx answers (a refused login, sender or recipient) are permanent. When some
recipients are refused and others accepted, a retry (4xx) sends it to all again.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate

from vebus import config
from vebus.bus.cloudevent import CloudEvent
from vebus.errors import DeliveryError, ErrorCode, PermanentDeliveryError, RetryableDeliveryError
from vebus_dispatcher.sinks.base import SinkContext
from vebus_dispatcher.sinks.templating import compile_field, render
from vebus_dispatcher.sinks.threads import SinkThreads

__all__ = ["EmailSink", "smtp_error"]

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class EmailSink:
    """Sends each event as a plain-text e-mail to `to`."""

    kind = "email"

    def __init__(self, sink: config.EmailSink, ctx: SinkContext) -> None:
        self._sink = sink
        self._port = sink.port or DEFAULT_PORTS[sink.security]
        self._timeout = float(ctx.route.delivery.timeout)
        self._subject = compile_field(ctx.route.name, "subject", sink.subject)
        self._body = compile_field(ctx.route.name, "body", sink.body)
        self._tls: ssl.SSLContext | None = None
        if sink.security != "none":
            self._tls = ssl.create_default_context(cafile=sink.ca_file)
            if sink.insecure:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._threads = SinkThreads(f"email-{ctx.route.name}", ctx.route.delivery.max_in_flight)

    def message(self, event: CloudEvent) -> EmailMessage:
        """The e-mail for `event`."""
        msg = EmailMessage()
        msg["From"] = self._sink.from_
        msg["To"] = ", ".join(self._sink.to)
        msg["Subject"] = " ".join(render(self._subject, event).split())[:900]
        msg["Date"] = formatdate(localtime=False)
        digest = hashlib.sha256(f"{event.source}\n{event.id}".encode()).hexdigest()[:32]
        msg["Message-ID"] = f"<{digest}@vebus>"
        msg.set_content(render(self._body, event))
        return msg

    async def deliver(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        await self._threads.run(self._send, self.message(event))

    def _send(self, msg: EmailMessage) -> None:
        s = self._sink
        where = f"smtp://{s.host}:{self._port}"
        try:
            smtp: smtplib.SMTP
            if s.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    s.host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                smtp = smtplib.SMTP(s.host, self._port, timeout=self._timeout)
            with smtp:
                smtp.ehlo()
                if s.security == "starttls":
                    smtp.starttls(context=self._tls)
                    smtp.ehlo()
                if s.username is not None and s.password is not None:
                    smtp.login(s.username, s.password)
                refused = smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as e:
            raise smtp_error(where, e) from e
        if refused:
            raise smtp_error(where, smtplib.SMTPRecipientsRefused(refused))

    async def close(self) -> None:
        await self._threads.close()


def smtp_error(where: str, e: BaseException) -> DeliveryError:
    """A DeliveryError for an SMTP failure: 4xx and connection problems retryable."""
    code: int | None = None
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [int(c) for c, _ in e.recipients.values()]
        detail = "; ".join(
            f"{rcpt}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
            for rcpt, (c, m) in e.recipients.items()
        )
        code = min(codes) if any(c < 500 for c in codes) else max(codes)
        message = f"{where} refused recipient(s): {detail}"
    elif isinstance(e, smtplib.SMTPResponseException):
        code = int(e.smtp_code)
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else ""
        message = f"{where} answered {code} {' '.join(text.split())}"
    elif isinstance(e, smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError(
            f"{where}: {e} (set security to match the server)", code=ErrorCode.SINK_ERROR
        )
    elif isinstance(e, TimeoutError):
        return RetryableDeliveryError(f"{where}: timed out: {e}", code=ErrorCode.TIMEOUT)
    else:
        return RetryableDeliveryError(
            f"{where}: connection failed: {e!r}", code=ErrorCode.CONNECTION_FAILURE
        )
    if 400 <= code < 500:
        return RetryableDeliveryError(message, code=ErrorCode.SINK_ERROR, status=code)
    return PermanentDeliveryError(message, code=ErrorCode.SINK_ERROR, status=code)
