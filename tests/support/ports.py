"""Ports for processes the tests start: `vebus up --nats-cluster N` listens on N ports in a row."""

from __future__ import annotations

import socket

from vebus.embedded import free_port

__all__ = ["free_port_run"]


def free_port_run(n: int) -> int:
    """A port p such that p .. p+n-1 are free."""
    for _ in range(50):
        p = free_port()
        if all(_port_is_free(p + i) for i in range(n)):
            return p
    raise RuntimeError("no run of free ports")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
