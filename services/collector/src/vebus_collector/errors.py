"""The collector's exceptions.

CollectorError (a vebus.errors.VebusError)
├── LeaseLostError         another replica holds this vCenter now: stop following it
├── CheckpointConflictError the checkpoint moved under us (a newer leader claimed it)
└── StallError             the watchdog saw vCenter ahead of us for too long: reconnect

VCenter errors (connection refused, TLS, NotAuthenticated) are pyvmomi's own and retried
with backoff by the follower; publish failures are vebus.errors.PublishError (retryable).
"""

from __future__ import annotations

from vebus.errors import VebusError

__all__ = ["CheckpointConflictError", "CollectorError", "LeaseLostError", "StallError"]


class CollectorError(VebusError):
    """Root of the collector's own errors."""


class LeaseLostError(CollectorError):
    """This replica no longer holds the vCenter's lease (expired, or taken over)."""


class CheckpointConflictError(CollectorError):
    """The checkpoint's revision is not the one this replica last wrote or read."""


class StallError(CollectorError):
    """vCenter has newer events than the last published one and nothing moves."""
