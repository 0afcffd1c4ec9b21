"""Ports for processes the tests start: `vebus up --nats-cluster N` listens on N ports in a row."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_run"]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free, below the ephemeral range: a port that
    `free_port()` found free can be taken by any outgoing connection a moment later, and on
    a busy machine one is, between the choice and the server's start."""
    low = _ephemeral_range()[0]
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(10000, max(10001, low - n - 1))
        if all(_port_is_free(p + i) for i in range(n)):
            return p
    raise RuntimeError("no run of free ports")
