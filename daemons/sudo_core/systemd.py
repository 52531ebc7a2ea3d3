"""systemd integration: inherited sockets (sd_listen_fds) and sd_notify with watchdog pings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator

import sdnotify

SD_LISTEN_FDS_START = 3
log = logging.getLogger(__name__)


def listen_fds() -> dict[str, socket.socket]:
    """Sockets passed by systemd, by name (LISTEN_FDNAMES; "unknown" when unnamed).

    The variables are removed afterwards so that children never inherit them.
    """
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "")
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return {}
    labels = names.split(":") if names else []
    sockets = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = labels[i] if i < len(labels) and labels[i] else "unknown"
        sockets[name] = socket.socket(fileno=fd)
    return sockets


class Notifier:
    """sd_notify: READY, STATUS, STOPPING, and WATCHDOG pings at half the unit's WatchdogSec."""

    def __init__(self) -> None:
        self._notify = sdnotify.SystemdNotifier()
        # Never block the event loop on a reader that is not reading: a full queue drops the
        # message (sdnotify swallows the error), which systemd tolerates better than a hang.
        if self._notify.socket is not None:  # None outside systemd: notify() does nothing
            self._notify.socket.setblocking(False)

    def send(self, message: str) -> None:
        self._notify.notify(message)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    @contextlib.asynccontextmanager
    async def serving(self, status: str) -> AsyncIterator[asyncio.Event]:
        """READY, and watchdog pings while the block runs; the event is set on SIGTERM or
        SIGINT. STOPPING is sent as the block ends, before the daemon's own cleanup."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.ready(status)
        watchdog = asyncio.create_task(self.watchdog())
        try:
            yield stop
        finally:
            self.stopping()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def watchdog(self) -> None:
        """Ping the watchdog while the event loop is alive; returns at once without one."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            usec = 0
        pid = os.environ.get("WATCHDOG_PID")
        if usec <= 0 or (pid and int(pid) != os.getpid()):
            return
        interval = usec / 1_000_000 / 2
        log.debug("watchdog armed, pinging every %.1f s", interval)
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
