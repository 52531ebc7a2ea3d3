"""The fleet as the admin sees it (from the pages or /v1): its families, runtimes and units;
the fleet restart, and the image upgrade or rollback, an admin starts, and their progress."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from sudo_core import backups, runtime_image, usage
from sudo_core.config import Settings
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

from . import host_units

log = logging.getLogger("sudo-api.admin")


@dataclass
class FleetChange:
    """A change of the whole fleet an admin started, run in the background, and its progress as
    the admin page shows it: one at a time of each kind."""

    provisioner: ProvisionerClient
    progress: dict[str, Any] = field(default_factory=lambda: {"state": "idle"})
    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _begin(
        self, progress: dict[str, Any], run: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> bool:
        """Start `run()` with `progress` shown; False (and nothing started) if one is running."""
        if self.running:
            return False
        self.progress = progress | {"state": "running", "started_at": time.time(), "done": 0, "total": None}
        self._task = asyncio.create_task(run(), name=name)
        return True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class FleetRestart(FleetChange):
    """The one restart-all in progress (or the last one)."""

    def start(self, reason: str) -> bool:
        return self._begin({"reason": reason}, self._run, "restart-all")

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
                        failed.append({"family": event["family"], "error": event["error"]})
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


class ImageChange(FleetChange):
    """The image upgrade or rollback an admin started from /admin, as the page follows it.

    What the provisioner did is kept by it (runtime-image.json, read by `image_view`); this
    holds only the progress of the one started here, which the page shows while it runs."""

    def start(self, ref: str | None) -> bool:
        """Upgrade to `ref`, or (None) roll back to the previous image; False if one runs."""
        action = "upgrade" if ref else "rollback"
        return self._begin(
            {"action": action, "image": ref, "step": "starting"}, lambda: self._run(ref), "image-change"
        )

    async def _run(self, ref: str | None) -> None:
        events = self.provisioner.image_upgrade(ref) if ref else self.provisioner.image_rollback()
        finished = False
        try:
            async for event in events:
                kind = event["event"]
                if kind == "start":
                    self.progress |= {"total": event["total"], "done": 0}
                elif kind in ("restarted", "kept", "failed"):
                    self.progress["done"] = event["done"]
                elif kind == "done":
                    self.progress |= {
                        "state": event["outcome"],
                        "image": event["image"],
                        "reason": event.get("reason"),
                        "failed": event["failed"],
                    }
                    finished = True
                else:  # canary, canary passed, rolling back
                    self.progress["step"] = kind
            if not finished:  # the provisioner died midway, its stream cut short between events
                raise ProvisionerError(502, {"error": "the provisioner stopped before it finished"})
        except (ProvisionerError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.error("image %s failed: %s", self.progress["action"], exc)
            self.progress |= {"state": "failed", "error": str(exc)}
        self.progress["finished_at"] = time.time()


async def image_view(settings: Settings) -> dict[str, Any]:
    """The runtimes' image, the previous one, an upgrade under way and the last upgrades and
    rollbacks, as the provisioner keeps them (read from its state file: no provisioner woken)."""
    try:
        state = await asyncio.to_thread(runtime_image.read, settings.core.state_dir)
    except runtime_image.StateUnreadable as exc:
        return runtime_image.summary(runtime_image.ImageState(), "unknown") | {"error": str(exc)}
    return runtime_image.summary(state, settings.runtime.image) | {"error": None}


async def fleet_view(svc: Any) -> dict[str, Any]:
    """Each family's runtime, activity and memory, and the host's units."""
    families = {str(f.id): f for f in await svc.db.aio(svc.db.list_families)}
    members = await svc.db.aio(svc.db.member_counts)
    used = await svc.db.aio(usage.on, svc.db, None)
    volumes = await svc.db.aio(usage.volumes, svc.db)
    try:
        runtimes = await svc.provisioner.list(stats=True)
        runtime_error = None
    except (ProvisionerError, OSError) as exc:
        runtimes, runtime_error = [], f"the provisioner did not answer: {exc}"
    by_family = {str(r.family): r for r in runtimes if r.family}
    fleet = [
        {
            "user_id": family_id,
            "name": family.name,
            "last_active_at": family.last_active_at,
            "members": members.get(family.id, 0),
            "tokens_today": used[family.id].tokens if family.id in used else 0,
            "storage_bytes": volumes[family.id].bytes if family.id in volumes else None,
            "over_quota": family.id in volumes and volumes[family.id].over_quota,
            "disabled": family.disabled_at is not None,
            "state": by_family[family_id].state if family_id in by_family else "stopped",
            "memory_bytes": by_family[family_id].memory_bytes if family_id in by_family else None,
        }
        for family_id, family in families.items()
    ]
    try:
        units = [asdict(u) | {"healthy": u.healthy} for u in await host_units.unit_states()]
        units_error = None
    except host_units.HostUnitsUnavailable as exc:
        units, units_error = [], str(exc)
    whatsapp_problems = [
        {
            "family": families[m.family_id].name if m.family_id in families else "(no family)",
            "number": m.number[:3] + "…" + m.number[-4:],
            "status": m.status,
            "error": m.error,
            "updated_at": m.updated_at,
        }
        for m in await svc.db.aio(svc.whatsapp.outbound.problems)
    ]
    return {
        "families": fleet,
        "runtimes_error": runtime_error,
        "units": units,
        "units_error": units_error,
        "whatsapp_problems": whatsapp_problems,
        "backup": backups.summary(await asyncio.to_thread(backups.read_status, svc.settings.core.state_dir)),
        "image": await image_view(svc.settings),
    }
