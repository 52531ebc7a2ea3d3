"""sd_notify for a Type=notify unit: READY, STATUS, STOPPING, and watchdog pings from the event loop.

The pings come from a task on the event loop, so they stop exactly when the loop is stuck; the
audio threads can't keep a hung daemon alive. Outside systemd (no NOTIFY_SOCKET) nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os

import sdnotify

log = logging.getLogger("sudo-edge.notify")


class Notifier:
    def __init__(self) -> None:
        self._notify = sdnotify.SystemdNotifier()
        if self._notify.socket is not None:
            # A full socket queue drops the message rather than blocking the event loop.
            self._notify.socket.setblocking(False)
        self.status_text = ""
        """The last STATUS sent."""

    def send(self, message: str) -> None:
        self._notify.notify(message)

    def ready(self, status: str) -> None:
        self.status_text = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self.status_text:
            self.status_text = status
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping at half of WatchdogSec= while the loop runs; returns at once without a watchdog."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            pid = int(os.environ.get("WATCHDOG_PID", "0"))
        except ValueError:
            return
        if usec <= 0 or (pid and pid != os.getpid()):
            return
        interval = usec / 2_000_000
        log.debug("watchdog armed: pinging every %.1f s", interval)
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
