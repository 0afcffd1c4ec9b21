"""What each vCenter's follower is doing, for /readyz and the logs.

States: `standby` (another replica holds the lease), `connecting`, `catching_up`,
`tailing`, `stalled` (vCenter is ahead and nothing moves), `unreachable` (the last attempt
failed; `error` says why). The collector is ready while every vCenter is standby or
tailing (caught up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CONNECTED_STATES", "OK_STATES", "State", "VCenterStatus", "overall"]

State = Literal[
    "starting", "standby", "connecting", "catching_up", "tailing", "stalled", "unreachable"
]
OK_STATES: frozenset[str] = frozenset({"standby", "tailing"})
#: the states in which this replica has a live session to its vCenter
CONNECTED_STATES: frozenset[str] = frozenset({"catching_up", "tailing", "stalled"})


@dataclass
class VCenterStatus:
    """The live state of one vCenter in this replica."""

    name: str
    state: State = "starting"
    active: bool = False
    holder: str | None = None
    error: str | None = None
    changed: float = field(default_factory=time.time)
    epoch: int | None = None
    key: int | None = None
    vcenter_key: int | None = None
    published: int = 0
    history_lost: int = 0
    stalls: int = 0
    resyncs: int = 0
    takeovers: int = 0
    on_change: Callable[[], None] | None = None

    def set(self, state: State, error: str | None = None) -> None:
        """Move to `state` (the readiness callback runs when it changed)."""
        changed = state != self.state or error != self.error
        self.state, self.error = state, error
        if changed:
            self.changed = time.time()
            if self.on_change is not None:
                self.on_change()

    def as_dict(self) -> dict[str, Any]:
        """The /readyz view."""
        out: dict[str, Any] = {
            "state": self.state,
            "role": "active" if self.active else "standby",
            "since": round(self.changed, 3),
            "published": self.published,
        }
        if self.error:
            out["error"] = self.error
        if not self.active and self.holder:
            out["holder"] = self.holder
        if self.key is not None:
            out["position"] = {"epoch": self.epoch, "key": self.key}
        if self.vcenter_key is not None:
            out["vcenter_key"] = self.vcenter_key
        for name in ("history_lost", "resyncs", "stalls", "takeovers"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


def overall(statuses: list[VCenterStatus]) -> bool:
    """Ready when every vCenter is standby or tailing."""
    return all(s.state in OK_STATES for s in statuses)
