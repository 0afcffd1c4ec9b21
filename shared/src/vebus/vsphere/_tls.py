"""The TLS policy and the password of a vCenter-facing config block (no pyvmomi here).

| config                | the SSL context handed to pyvmomi                               |
|-----------------------|-----------------------------------------------------------------|
| (default)             | verifying: the system's CAs, the host name checked              |
| `ca_file: PATH`       | verifying: only the CA(s) in PATH (PEM), the host name checked  |
| `insecure: true`      | no verification at all; the session logs a warning saying so   |

A context is built for every login, `http://` URLs included (where it is unused), and
always handed to pyvmomi: given none, pyvmomi skips certificate checks on its own for
`localhost`, `127.0.0.1` and `::1` (`pyVim.connect.getSslContext`).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from vebus.config import VCenterEndpoint
from vebus.errors import ConfigError

__all__ = ["read_password", "ssl_context", "tls_notice"]


def ssl_context(endpoint: VCenterEndpoint, where: str) -> ssl.SSLContext:
    """The SSL context for `endpoint` (ConfigError when `ca_file` is not usable PEM)."""
    if endpoint.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if endpoint.ca_file:
        try:
            return ssl.create_default_context(cafile=endpoint.ca_file)
        except (OSError, ssl.SSLError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ConfigError(
                [
                    f"{where}.ca_file {endpoint.ca_file!r}: cannot load it as PEM "
                    f"certificates ({reason})"
                ]
            ) from None
    return ssl.create_default_context()


def read_password(endpoint: VCenterEndpoint, where: str) -> str:
    """The password: `password`, or `password_file` read now (without its final newline)."""
    if not endpoint.password_file:
        return endpoint.password
    try:
        text = Path(endpoint.password_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(
            [f"{where}.password_file {endpoint.password_file!r}: cannot read it ({reason})"]
        ) from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError([f"{where}.password_file {endpoint.password_file!r}: it is empty"])
    return password


def tls_notice(endpoint: VCenterEndpoint, where: str) -> tuple[int, str] | None:
    """(log level, message) saying what `endpoint`'s TLS setting exposes, or None."""
    if endpoint.insecure and endpoint.url.startswith("https:"):
        return logging.WARNING, (
            f"{where}: insecure: true: vCenter's TLS certificate is NOT verified; anyone on "
            f"the network path to {endpoint.url} can pose as vCenter and read the username, "
            "the password and everything the session sends (use ca_file for a private CA "
            "instead)"
        )
    if endpoint.url.startswith("http:"):
        return logging.INFO, (
            f"{where}: {endpoint.url} is plain HTTP: the password and every call travel "
            "unencrypted (a simulator; use https for a real vCenter)"
        )
    return None
