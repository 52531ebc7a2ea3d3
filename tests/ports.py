"""Ports for the servers the tests start.

A port found by binding to port 0 comes from the kernel's ephemeral range, the range every
outgoing connection also draws its source port from. Between the test choosing it and the
daemon binding it, a client socket of any process may take it: CI saw sudo-api die with
"address already in use" on its metrics port that way. So ports are drawn from below the
ephemeral range, where only listeners live, and none is handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and no outgoing connection will take."""
    highest = max(_ephemeral_start() - 1, LOWEST + 1000)
    for _ in range(1000):
        port = random.randrange(LOWEST, highest)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port between {LOWEST} and {highest}")
