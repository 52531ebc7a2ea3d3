from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sudo_core.systemd import Notifier

CHILD = """
import json, os, socket
from sudo_core.systemd import listen_fds
found = listen_fds()
print(json.dumps({
    "names": {n: s.family == socket.AF_UNIX for n, s in found.items()},
    "left": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ],
}))
"""


def run_child(tmp_path: Path, pid: str) -> str:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen()
    fd = listener.fileno()
    env = os.environ | {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "provisioner"}
    prefix = 'LISTEN_PID=$$ exec "$@"' if pid == "self" else f'LISTEN_PID={pid} exec "$@"'
    out = subprocess.run(
        ["sh", "-c", prefix, "sh", sys.executable, "-c", CHILD],
        env=env,
        pass_fds=(fd, 3),
        preexec_fn=lambda: os.dup2(fd, 3),
        capture_output=True,
        text=True,
        check=True,
    )
    listener.close()
    return out.stdout


def test_listen_fds_takes_the_inherited_socket_and_clears_the_variables(tmp_path: Path):
    assert '{"names": {"provisioner": true}, "left": []}' in run_child(tmp_path, "self")


def test_listen_fds_ignores_sockets_meant_for_another_process(tmp_path: Path):
    assert '{"names": {}, "left": []}' in run_child(tmp_path, "1")


def notify_socket(tmp_path: Path, monkeypatch) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    return sock


def test_notifier_speaks_sd_notify(tmp_path: Path, monkeypatch):
    sock = notify_socket(tmp_path, monkeypatch)
    notifier = Notifier()
    notifier.ready("serving")
    notifier.stopping()
    assert sock.recv(100) == b"READY=1\nSTATUS=serving"
    assert sock.recv(100) == b"STOPPING=1"


async def test_watchdog_pings_and_never_blocks_on_a_reader_that_is_not_reading(tmp_path: Path, monkeypatch):
    sock = notify_socket(tmp_path, monkeypatch)
    monkeypatch.setenv("WATCHDOG_USEC", "2000")  # a ping every millisecond
    notifier = Notifier()
    task = asyncio.create_task(notifier.watchdog())
    # nobody reads for a while: the socket's queue fills; the event loop must keep running
    started = time.monotonic()
    ticks = 0
    while time.monotonic() - started < 0.5:
        await asyncio.sleep(0.01)
        ticks += 1
    task.cancel()
    assert ticks > 20, "the event loop stalled behind a full notify socket"
    assert sock.recv(100) == b"WATCHDOG=1"


async def test_watchdog_returns_at_once_without_systemd(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(Notifier().watchdog(), timeout=1)
