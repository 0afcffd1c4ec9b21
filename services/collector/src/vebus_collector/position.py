"""Where a collector is in a vCenter's event history: epoch, key and createdTime.

vCenter event keys are int32 and grow by one; they go back in two ways that must not be
confused: a wrap past 2**31-1 to negative keys (the same history going on), and a restart
of the key sequence (a restored or rebuilt vCenter, a restarted simulator: a new epoch).
Keys are compared with serial-number arithmetic (RFC 1982) so a wrap still counts as newer.
"""

from __future__ import annotations

import datetime as dt

import msgspec

__all__ = ["Position", "is_newer", "key_distance", "next_key", "parse_time", "to_int32"]

_MOD = 1 << 32
_HALF = 1 << 31


def to_int32(key: int) -> int:
    """`key` folded into the signed 32-bit range."""
    key &= _MOD - 1
    return key - _MOD if key >= _HALF else key


def key_distance(key: int, base: int) -> int:
    """How far after `base` `key` comes, in 0 .. 2**32-1 (serial arithmetic)."""
    return (key - base) % _MOD


def is_newer(key: int, than: int | None) -> bool:
    """True when `key` comes after `than` (None: nothing seen yet)."""
    if than is None:
        return True
    d = key_distance(key, than)
    return 0 < d < _HALF


def next_key(key: int) -> int:
    """The key that follows `key`, wrapping past int32."""
    return to_int32(key + 1)


def parse_time(value: str) -> dt.datetime:
    """An RFC 3339 time (with `Z`) as an aware datetime."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """The last event published from one vCenter (the checkpoint's content)."""

    epoch: int = 0
    #: None: no event seen yet in this epoch
    key: int | None = None
    #: RFC 3339 createdTime of the event `key`
    created_time: str | None = None

    def after(self, other: Position | None) -> bool:
        """True when this position is further on than `other`."""
        if other is None:
            return True
        if self.epoch != other.epoch:
            return self.epoch > other.epoch
        if self.key is None:
            return False
        return is_newer(self.key, other.key)
