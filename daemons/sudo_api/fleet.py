"""The fleet restart the admin starts (from the settings page or /v1), and its progress."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

log = logging.getLogger("sudo-api.admin")


@dataclass
class FleetRestart:
    """The one restart-all in progress (or the last one), as the admin page shows it."""

    provisioner: ProvisionerClient
    progress: dict[str, Any] = field(default_factory=lambda: {"state": "idle"})
    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, reason: str) -> bool:
        if self.running:
            return False
        self.progress = {
            "state": "running",
            "reason": reason,
            "started_at": time.time(),
            "done": 0,
            "total": None,
        }
        self._task = asyncio.create_task(self._run(), name="restart-all")
        return True

    async def _run(self) -> None:
        failed: list[dict[str, str]] = []
        finished = False
        try:
            async for event in self.provisioner.restart_all():
                if event["event"] == "start":
                    self.progress["total"] = event["total"]
                elif event["event"] in ("restarted", "failed"):
                    self.progress["done"] = event["done"]
                    if event["event"] == "failed":
                        failed.append({"user_id": event["user_id"], "error": event["error"]})
                finished = finished or event["event"] == "done"
            if not finished:  # the provisioner died midway, its stream cut short between events
                raise ProvisionerError(502, {"error": "the provisioner stopped before the restart finished"})
            self.progress |= {"state": "done" if not failed else "failed", "failed": failed}
        except (ProvisionerError, aiohttp.ClientError, OSError, ValueError) as exc:
            # A provisioner killed midway cuts the stream (ClientPayloadError, or a JSON line cut
            # in half): the page must say the restart failed, never show it running forever.
            log.error("restart-all failed: %s", exc)
            self.progress |= {"state": "failed", "error": str(exc), "failed": failed}
        self.progress["finished_at"] = time.time()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
