"""HMAC-SHA256 request signatures: what a webhook sink sends and the webhook source checks.

`sha256=<hex HMAC-SHA256(secret, message)>` in a header (names.H_SIGNATURE by default), as
GitHub signs its webhooks. The message is the request body; or, with a timestamp, the
Unix time in names.H_SIGNED_AT, a dot, then the body (as Stripe signs), so that a
captured request stops being accepted once its time is older than the receiver's
tolerance. Both sides share this module: what one signs, the other verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["PREFIX", "sign", "verify"]

PREFIX = "sha256="


def _message(body: bytes, timestamp: str | None) -> bytes:
    return body if timestamp is None else timestamp.encode("ascii") + b"." + body


def sign(secret: str, body: bytes, timestamp: str | None = None) -> str:
    """The signature header value of `body` (and `timestamp`, when given)."""
    digest = hmac.new(secret.encode(), _message(body, timestamp), hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify(
    secret: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    tolerance: float | None,
    now: float | None = None,
) -> str | None:
    """None when `signature` signs `body` (with `timestamp`, required when `tolerance` is
    given, and no further than `tolerance` seconds from `now`); else what is wrong."""
    if not signature:
        return "the request is not signed"
    if tolerance is not None:
        if not timestamp:
            return "the request has no signature timestamp"
        try:
            when = float(timestamp)
        except ValueError:
            return f"the signature timestamp {timestamp!r} is not a Unix time"
        skew = abs((time.time() if now is None else now) - when)
        if skew > tolerance:
            return f"the signature is {skew:.0f}s old (or ahead), past the {tolerance:g}s allowed"
    want = sign(secret, body, timestamp if tolerance is not None else None)
    if not hmac.compare_digest(signature.strip().encode(), want.encode()):
        return "the signature does not match the body"
    return None
