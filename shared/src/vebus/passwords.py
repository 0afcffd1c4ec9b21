"""Passwords and tokens kept as scrypt hashes: what the console's sign-in stores and checks.

A hash is one string, `scrypt$<n>$<r>$<p>$<salt>$<digest>` (salt and digest in unpadded
base64url), from the standard library's `hashlib.scrypt` with a random 16-byte salt, so a
config file or a `vebus up` data folder holds no secret that signs anyone in. Checking
costs about 50 ms of CPU (n=2**14, r=8): callers that check the same bearer token on every
request remember the outcome by the token's SHA-256 (vebus_console.auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["SCHEME", "hash_secret", "is_hash", "new_token", "verify_secret"]

SCHEME = "scrypt"
#: scrypt cost parameters: 16 MiB of memory and ~50 ms on one core
N, R, P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """The scrypt hash of `secret`, with a new random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def is_hash(value: str) -> bool:
    """Whether `value` has the form `hash_secret` writes (not whether any secret fits it)."""
    parts = value.split("$")
    if len(parts) != 6 or parts[0] != SCHEME or not all(x.isdigit() for x in parts[1:4]):
        return False
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n * r * 128 > _MAXMEM:
        return False
    try:
        return len(_unb64(parts[4])) >= 8 and len(_unb64(parts[5])) >= 16
    except ValueError:
        return False


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` is the one `stored` (a `hash_secret` string) was made from."""
    if not is_hash(stored):
        return False
    _, n, r, p, salt, digest = stored.split("$")
    want = _unb64(digest)
    got = hashlib.scrypt(
        secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM,
        dklen=len(want),
    )  # fmt: skip
    return hmac.compare_digest(got, want)


def new_token() -> str:
    """A random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)
