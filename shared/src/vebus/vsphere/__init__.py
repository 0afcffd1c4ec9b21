"""vCenter sessions for every part of vebus that talks to vCenter (needs pyvmomi: the
`vebus[vsphere]` extra).

- `Session`: one logged-in session with the TLS policy of the config block (system CAs or
  `ca_file`; `insecure: true` warns), `password_file` read at each login, bounded HTTP
  timeouts, a new login on NotAuthenticated (`run`), logout.
- `SessionPool`: up to N such sessions with one vCenter, lent one caller at a time.
- `ssl_context`, `read_password`: the TLS policy and the password on their own.
- Errors (in vebus.errors, re-exported here): VCenterConnectionError (retryable),
  VCenterCertificateError and VCenterLoginError (permanent). A `password_file` or
  `ca_file` that cannot be read is a ConfigError naming the field.

Everything here blocks: call it from worker threads.
"""

from __future__ import annotations

from vebus.errors import VCenterCertificateError, VCenterConnectionError, VCenterLoginError
from vebus.vsphere._pool import SessionPool
from vebus.vsphere._session import HTTP_TIMEOUT, Session
from vebus.vsphere._tls import read_password, ssl_context, tls_notice

__all__ = [
    "HTTP_TIMEOUT",
    "Session",
    "SessionPool",
    "VCenterCertificateError",
    "VCenterConnectionError",
    "VCenterLoginError",
    "read_password",
    "ssl_context",
    "tls_notice",
]
