"""Why logging in to a vCenter failed, in the vebus error tree (retryable follows from the
class).

VebusError (vebus.errors)
├── RetryableError
│   └── VCenterConnectionError   vCenter cannot be reached or does not answer in time
│                                (refused, reset, timed out, not a vSphere SDK endpoint)
└── PermanentError
    ├── VCenterCertificateError  vCenter's TLS certificate does not verify against the
    │                            system's CAs or `ca_file`
    └── VCenterLoginError        vCenter refused the username and password

A `password_file` or `ca_file` that cannot be read is a vebus.errors.ConfigError naming
the field. Faults of calls made with a logged-in session are pyvmomi's own.
"""

from __future__ import annotations

from vebus.errors import PermanentError, RetryableError

__all__ = ["VCenterCertificateError", "VCenterConnectionError", "VCenterLoginError"]


class VCenterConnectionError(RetryableError):
    """vCenter cannot be reached, or did not answer as a vSphere SDK endpoint."""


class VCenterCertificateError(PermanentError):
    """vCenter's TLS certificate is not trusted (set `ca_file`, or `insecure` for a lab)."""


class VCenterLoginError(PermanentError):
    """vCenter refused the login (wrong username or password)."""
