"""NATS decentralised auth for the tests: an operator, a system account, an account with
JetStream and a user, as NKEYs and JWTs (what `nsc` makes), and the user's .creds file.

The JWTs are made here with the `nkeys` package nats-py uses for credentials files:
`{"typ": "JWT", "alg": "ed25519-nkey"}`, signed by the issuer's NKEY; nats-server checks
the chain operator -> account -> user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

__all__ = ["Decentralised"]

_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[Any, bytes]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(seed), seed


def _jwt(issuer: Any, subject: Any, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
        "sub": subject.public_key.decode(), "nats": {"version": 2, **nats},
    }  # fmt: skip
    raw = json.dumps(claims, separators=(",", ":")).encode()
    claims["jti"] = base64.b32encode(hashlib.sha512(raw).digest()[:32]).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing = f"{header}.{_b64(json.dumps(claims).encode())}"
    return signing + "." + _b64(issuer.sign(signing.encode()))


class Decentralised:
    """An operator with a system account and one account (JetStream on) and its user."""

    def __init__(self) -> None:
        operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
        system, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.operator_jwt = _jwt(operator, operator, "vebus-test", {
            "type": "operator", "system_account": system.public_key.decode()})  # fmt: skip
        self.system = system
        self.system_jwt = _jwt(operator, system, "SYS", {"type": "account", "limits": _UNLIMITED})
        js = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        self.account_jwt = _jwt(operator, self.account, "vebus",
                                {"type": "account", "limits": {**_UNLIMITED, **js}})  # fmt: skip

    def server_conf(self) -> str:
        """The nats-server config of this operator (a memory resolver with the accounts)."""
        return (
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system.public_key.decode()}\n"
            "resolver: MEMORY\nresolver_preload: {\n"
            f"  {self.account.public_key.decode()}: {self.account_jwt}\n"
            f"  {self.system.public_key.decode()}: {self.system_jwt}\n}}\n"
        )

    def user_creds(self, path: Path, *, account: Any = None) -> Path:
        """A user of `account` (default: the operator's account) as a .creds file."""
        user, seed = _keypair(nkeys.PREFIX_BYTE_USER)
        nats = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
        token = _jwt(account or self.account, user, "vebus-user", nats)
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        os.chmod(path, 0o600)
        return path

    @staticmethod
    def stranger() -> Any:
        """An account no server of this operator knows."""
        account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        return account
