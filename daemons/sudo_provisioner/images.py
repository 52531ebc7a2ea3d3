"""Upgrading the runtimes' Hermes image: a canary, the fleet, and a rollback.

`upgrade(ref)`: the image `ref` names is tried on one canary runtime, which must become
healthy and answer a real chat turn (through the gateway to the provider); only then is it the
fleet's image, and the running runtimes are recreated on it at restart priority (someone
waiting on a spawn goes first), the least recently active first. If the canary fails, or more
than `image.max_failures` runtimes do, the runtimes go back to the image before.
`rollback()` goes back to the previous image on its own.

Every step is written to `runtime-image.json` (sudo_core.runtime_image) before the fleet
changes. A provisioner stopped midway (a crash, a restart) finds the upgrade there at its next
start and rolls it back (`resume`): the fleet is never left split between two images, and the
operator runs the upgrade again. The image names `<runtime.network>:current` and `:previous`
keep both images on the engine whatever happens to the names the operator built them under.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from sudo_core import runtime_image
from sudo_core.logs import fields
from sudo_core.runtime_image import Event, ImageState, Upgrade

from .backend import BackendError
from .runtimes import Progress, RuntimeManager

log = logging.getLogger(__name__)

INTERRUPTED = "the provisioner stopped during the upgrade"


class UpgradeRefused(RuntimeError):
    """The upgrade or rollback cannot begin (409); the message says why."""


class ImageUpgrades:
    def __init__(self, manager: RuntimeManager, state_dir: Path) -> None:
        self.manager = manager
        self.settings = manager.settings
        self._state_dir = state_dir
        self.state = runtime_image.read(state_dir)
        manager.pin(self.state.current)

    @property
    def interrupted(self) -> bool:
        """An upgrade or rollback was under way when the last provisioner stopped."""
        return self.state.upgrade is not None

    async def _save(self, state: ImageState) -> None:
        await asyncio.to_thread(runtime_image.write, self._state_dir, state)
        self.state = state

    async def upgrade(self, ref: str, progress: Progress) -> dict[str, Any]:
        """Canary, then the fleet; rolled back on failure. The summary says which."""
        if self.state.upgrade is not None:
            raise UpgradeRefused(f"an upgrade to {self.state.upgrade.target.ref} is under way")
        try:
            target = await self.manager.resolve(ref)
        except BackendError as exc:
            raise UpgradeRefused(f"{ref}: {exc} (build it, or pull and tag it, on this host first)") from None
        before = await self.manager.current_image()
        if target.id == before.id:
            raise UpgradeRefused(f"{ref} is the image the runtimes run already")
        running = await self.manager.running_families()
        canary = await self.manager.canary_family(running)
        if canary is None:
            raise UpgradeRefused("no family to try the image on: set runtime.image until one exists")
        upgrade = Upgrade(
            target=target,
            before=before,
            before_previous=self.state.previous,
            phase="canary",
            families=tuple(str(f) for f in running),
            started_at=time.time(),
        )
        await self._save(dataclasses.replace(self.state, upgrade=upgrade))
        log.info(
            f"upgrading the runtimes from {before.ref} to {ref}; canary {canary}",
            extra=fields(image=ref, image_id=target.id, previous=before.ref, canary=canary),
        )
        await progress({"event": "canary", "image": ref, "from": before.ref, "family": str(canary)})
        try:
            await self.manager.canary(canary, target, self._switch)
        except Exception as exc:  # whatever kept it from answering: the image is not taken
            log.exception(f"the canary {canary} failed on {ref}")
            return await self._roll_back(upgrade, f"the canary failed: {exc}", progress)
        await progress({"event": "canary passed", "family": str(canary)})
        limit = self.settings.image.max_failures
        # ...and those started meanwhile, still on the image before.
        families = list(dict.fromkeys([*running, *await self.manager.running_families()]))
        summary = await self.manager.recreate(families, progress, only_stale=True, max_failures=limit)
        failed = len(summary["failed"])
        if failed > limit:
            reason = f"{failed} runtime(s) failed on it, more than image.max_failures ({limit})"
            return await self._roll_back(upgrade, reason, progress)
        event = Event(time.time(), "upgraded", target.ref, before.ref, failed=failed)
        await self._save(dataclasses.replace(self.state, upgrade=None).with_event(event))
        log.info(
            f"upgraded the runtimes to {ref} ({failed} failed)",
            extra=fields(image=ref, image_id=target.id, previous=before.ref, failed=failed),
        )
        return {"event": "done", "outcome": "upgraded", "image": ref, "failed": summary["failed"]}

    async def _switch(self) -> None:
        """The canary passed: its image is the fleet's (called under the canary family's lock)."""
        upgrade = self.state.upgrade
        assert upgrade is not None
        await self._save(
            dataclasses.replace(
                self.state,
                current=upgrade.target,
                previous=upgrade.before,
                upgrade=dataclasses.replace(upgrade, phase="rolling"),
            )
        )
        self.manager.pin(upgrade.target)
        await self._tag()

    async def rollback(self, progress: Progress) -> dict[str, Any]:
        """Back to the previous image, which becomes the one to go forward to again."""
        current, previous = self.state.current, self.state.previous
        if self.state.upgrade is not None:
            raise UpgradeRefused(f"an upgrade to {self.state.upgrade.target.ref} is under way")
        if current is None or previous is None:
            raise UpgradeRefused("there is no previous image: no upgrade has happened on this host")
        running = await self.manager.running_families()
        upgrade = Upgrade(
            target=current,
            before=previous,
            before_previous=current,
            phase="rolling",
            families=tuple(str(f) for f in running),
            started_at=time.time(),
        )
        return await self._roll_back(upgrade, "asked for", progress)

    async def resume(self, progress: Progress) -> dict[str, Any] | None:
        """Finish what a stopped provisioner left: an upgrade is rolled back, a rollback done."""
        upgrade = self.state.upgrade
        if upgrade is None:
            return None
        if upgrade.phase == "rolling back":
            return await self._go_back(progress)
        return await self._roll_back(upgrade, INTERRUPTED, progress)

    async def _roll_back(self, upgrade: Upgrade, reason: str, progress: Progress) -> dict[str, Any]:
        await self._save(
            dataclasses.replace(
                self.state,
                current=upgrade.before,
                previous=upgrade.before_previous,
                upgrade=dataclasses.replace(upgrade, phase="rolling back", reason=reason),
            )
        )
        self.manager.pin(upgrade.before)
        await self._tag()
        return await self._go_back(progress)

    async def _go_back(self, progress: Progress) -> dict[str, Any]:
        """Every runtime that ran when the upgrade began, or runs now, on the current image."""
        upgrade = self.state.upgrade
        assert upgrade is not None and self.state.current is not None
        image, reason = self.state.current, upgrade.reason
        log.warning(
            f"rolling the runtimes back from {upgrade.target.ref} to {image.ref}: {reason}",
            extra=fields(image=image.ref, image_id=image.id, rolled_back=upgrade.target.ref, reason=reason),
        )
        await progress(
            {"event": "rolling back", "image": image.ref, "from": upgrade.target.ref, "reason": reason}
        )
        running = await self.manager.running_families()
        families = list(dict.fromkeys([*(uuid.UUID(f) for f in upgrade.families), *running]))
        summary = await self.manager.recreate(families, progress, only_stale=True)
        failed = len(summary["failed"])
        event = Event(time.time(), "rolled back", image.ref, upgrade.target.ref, reason, failed)
        await self._save(dataclasses.replace(self.state, upgrade=None).with_event(event))
        log.warning(
            f"rolled the runtimes back to {image.ref} ({failed} failed): {reason}",
            extra=fields(image=image.ref, rolled_back=upgrade.target.ref, reason=reason, failed=failed),
        )
        return {
            "event": "done",
            "outcome": "rolled back",
            "image": image.ref,
            "from": upgrade.target.ref,
            "reason": reason,
            "failed": summary["failed"],
        }

    async def _tag(self) -> None:
        """Name the current and the previous image `<runtime.network>:current`, `:previous`."""
        scope = self.settings.runtime.network.lower()
        for name, image in (("current", self.state.current), ("previous", self.state.previous)):
            if image is None:
                continue
            try:
                await self.manager.backend.tag(image.id, f"{scope}:{name}")
            except BackendError as exc:  # the state file is what counts; the name only keeps it
                log.warning(f"could not name {image.ref} {scope}:{name}: {exc}")

    def summary(self) -> dict[str, Any]:
        return runtime_image.summary(self.state, self.settings.runtime.image)
