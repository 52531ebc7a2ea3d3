"""Ports for the servers the tests start.

A port found by binding to port 0 comes from the kernel's ephemeral range, the range every
outgoing connection also draws its source port from. Between the test choosing it and the
daemon binding it, a client socket of any process may take it: CI saw sudo-api die with
"address already in use" on its metrics port that way. So ports are drawn from below the
ephemeral range, where only listeners live, and none is handed out twice by one process.
Under pytest-xdist each worker draws from its own slice of that range.
"""

from __future__ import annotations

import os
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


def worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of [low, high): all of it outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = (high - low) // count
    return low + int(worker) * width, low + (int(worker) + 1) * width


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and no outgoing connection will take."""
    lowest, highest = worker_slice(LOWEST, max(_ephemeral_start(), LOWEST + 2000))
    for _ in range(1000):
        port = random.randrange(lowest, highest)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port between {lowest} and {highest}")
