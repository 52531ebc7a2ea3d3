"""Every running runtime followed, and a runtime that died on its own revived.

sudo-api lists the provisioner's runtimes every `watch_interval_sec`. A running one gets its
family's chat channel even with no message pending, so that what the agent says first (a cron
reminder) reaches the history with no page open. A dead one is revived, since its agent may owe
replies (a WhatsApp message it had taken, a reminder) that no message of the family's would
wake it for.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import aiohttp
from prometheus_client import Counter, Gauge

from sudo_core.config import ApiSettings
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

log = logging.getLogger("sudo-api.watcher")

REVIVED = Counter("sudo_api_runtimes_revived_total", "Runtimes that died on their own, revived")
RUNTIMES = Gauge("sudo_api_runtimes_running", "Family runtimes running, as last listed by the provisioner")


class RuntimeWatcher:
    def __init__(
        self, provisioner: ProvisionerClient, settings: ApiSettings, follow: Callable[[uuid.UUID], None]
    ) -> None:
        self.provisioner = provisioner
        self.settings = settings
        self.follow = follow
        """Have the family's chat channel follow its running runtime (Conversations.follow)."""
        self._task: asyncio.Task[None] | None = None
        self._revived: dict[uuid.UUID, float] = {}
        self._revivals: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="runtime-watcher")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._revivals] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                runtimes = await self.provisioner.list()
                RUNTIMES.set(sum(r.running for r in runtimes))
                for runtime in runtimes:
                    if runtime.family is None:
                        continue
                    if runtime.running:
                        self.follow(runtime.family)
                    elif runtime.state in ("exited", "dead"):
                        self._revive(runtime.family)
            except (ProvisionerError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot list runtimes: %s", exc)
            except Exception:  # the watch goes on: a family's replies may depend on the next round
                log.exception("a round of the runtime watcher failed")
            await asyncio.sleep(self.settings.watch_interval_sec)

    def _revive(self, family: uuid.UUID) -> None:
        """Ask the provisioner to revive a dead runtime, at most once per ensure_interval_sec."""
        now = time.monotonic()
        if now - self._revived.get(family, -1e9) < self.settings.ensure_interval_sec:
            return
        self._revived[family] = now

        async def revive() -> None:
            try:
                if (await self.provisioner.revive(family)).get("revived"):
                    REVIVED.inc()
                    log.info("revived the dead runtime of %s", family)
            except (ProvisionerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("cannot revive the runtime of %s: %s", family, exc)

        task = asyncio.create_task(revive(), name=f"revive-{family}")
        self._revivals.add(task)
        task.add_done_callback(self._revivals.discard)
