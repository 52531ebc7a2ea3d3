"""The runtime lifecycle: ensure, stop, evict, reconcile, restart-all, an image's canary.

Concurrency rules (design principle 6):
- one lock per family serializes everything that changes that family's container, so spawn,
  stop, eviction and recreation never interleave;
- concurrent ensures of one family share one task: one spawn, one result for all callers; one
  who waits joining a warm-up raises its claim to theirs (admission.py), so it may evict and
  goes ahead of the queued warm-ups;
- spawn slots are bounded across families and given out by priority; restart-all also has a
  bound of its own;
- one lock covers counting the running runtimes and creating one, so runtime.max_running holds
  under concurrent spawns. An eviction for room takes the victim's lock only if it is free at
  that moment (never waits for it), so two spawns never wait on each other's family.
The ensure path reads the index (index.py), which the engine's changes keep current; the
rarer decisions (stop, revive, reconcile, restart-all) re-read the engine under the lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import IO, Any

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from sudo_core import usage
from sudo_core.config import Settings
from sudo_core.db import Database, Family
from sudo_core.families import api_key_for, runtime_name, volume_name
from sudo_core.logs import fields
from sudo_core.runtime_image import ImageRef

from .admission import Claim, Priority, Slots, memory_available
from .backend import ImageMissing, NameConflict, Runtime, RuntimeBackend
from .index import RuntimeIndex
from .spec import LABEL_OWNER, Image, Plugins, RuntimeSpec, build_spec

log = logging.getLogger(__name__)

SPAWNS = Counter("sudo_provisioner_spawns_total", "Runtime spawns", ["result"])
SPAWN_SECONDS = Histogram(
    "sudo_provisioner_spawn_seconds",
    "Create to healthy",
    buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
ENSURE_SECONDS = Histogram("sudo_provisioner_ensure_seconds", "Ensure latency", ["path"])
EVICTIONS = Counter("sudo_provisioner_evictions_total", "Runtimes evicted for idleness")
MAKE_ROOM = Counter(
    "sudo_provisioner_room_evictions_total", "Runtimes stopped to make room under runtime.max_running"
)
WARM_UPS_DEFERRED = Counter(
    "sudo_provisioner_warm_ups_deferred_total", "Warm-ups refused while the host lacked runtime.memory"
)
REVIVALS = Counter("sudo_provisioner_revivals_total", "Runtimes recreated after they died on their own")
REMOVALS = Counter("sudo_provisioner_orphans_removed_total", "Containers removed by reconcile")
RUNNING = Gauge("sudo_provisioner_runtimes_running", "Running runtimes at the last listing")

POLL_SEC = 0.1
POLL_FAST_SEC = 10.0
"""A new runtime's /health is polled every POLL_SEC for this long, then less and less often."""

Progress = Callable[[dict[str, Any]], Awaitable[None]]

CANARY_PROMPT = "Sudo is checking that a new version of this assistant works. Reply with the one word: ready."
"""The canary's chat turn (images.py): a session of its own, nothing of the family's in it."""


class FamilyNotFound(LookupError):
    pass


class FamilyDisabled(PermissionError):
    """The host's admin disabled the family: its agent does not run."""


class AtCapacity(RuntimeError):
    """runtime.max_running runtimes run and none may give its place now, or (for a warm-up) the
    host has not the memory for one more."""


class Busy(RuntimeError):
    """The family has a request in flight that did not end in time (409)."""


class SpawnFailed(RuntimeError):
    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


class RuntimeManager:
    def __init__(self, settings: Settings, db: Database, backend: RuntimeBackend, secret: bytes) -> None:
        self.settings = settings
        self.db = db
        self.backend = backend
        self.index = RuntimeIndex(backend)
        self._secret = secret
        self._plugins = Plugins.scan(settings.runtime.plugins_dir)
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()
        self._ensuring: dict[uuid.UUID, tuple[asyncio.Task[Runtime], Claim]] = {}
        self._claims: dict[uuid.UUID, Claim] = {}  # families whose spawn waits for or holds a slot
        self._specs: dict[uuid.UUID, tuple[tuple[str, str, str, str | None], RuntimeSpec]] = {}
        self._slots = Slots(settings.provisioner.max_concurrent_spawns)
        self._room = asyncio.Lock()
        self._healthy: set[str] = set()  # container ids this process saw answer /health
        self._pinned: ImageRef | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))

    async def start(self) -> None:
        """Build the index of runtimes and follow the engine's changes."""
        await self.index.start()

    async def close(self) -> None:
        await self.index.close()
        await self._http.close()
        await self.backend.close()

    def _lock(self, family: uuid.UUID) -> asyncio.Lock:
        lock = self._locks.get(family)
        if lock is None:
            lock = self._locks[family] = asyncio.Lock()
        return lock

    async def family(self, family_id: uuid.UUID) -> Family:
        """The family's row, or FamilyNotFound."""
        family = await self.db.aio(self.db.get_family, family_id)
        if family is None:
            raise FamilyNotFound(f"no family {family_id}")
        return family

    def pin(self, image: ImageRef | None) -> None:
        """The image runtimes are made from, by content id (images.py keeps it on disk); None:
        runtime.image, whatever it points at."""
        self._pinned = image

    async def _image(self, image: ImageRef | None = None) -> Image:
        """`image`, else the pinned one, else runtime.image as it points now."""
        chosen = image or self._pinned
        if chosen is None:
            ref = self.settings.runtime.image
            try:
                return await self.index.image(ref)
            except ImageMissing:
                raise SpawnFailed(
                    f"image {ref} is not on this Docker engine: build it (make hermes-image) "
                    "or retag the upstream image, then retry"
                ) from None
        try:
            return dataclasses.replace(await self.index.image(chosen.id), ref=chosen.ref)
        except ImageMissing:
            raise SpawnFailed(
                f"image {chosen.ref} ({chosen.id}) is no longer on this Docker engine"
            ) from None

    async def current_image(self) -> ImageRef:
        image = await self._image()
        return ImageRef(image.ref, image.id)

    async def resolve(self, ref: str) -> ImageRef:
        """The image `ref` names now; ImageMissing if none."""
        image = await self.backend.image(ref)
        return ImageRef(ref, image.id)

    async def _desired(
        self, family_id: uuid.UUID, touch: bool = False, image: ImageRef | None = None
    ) -> tuple[Family, RuntimeSpec]:
        """The family, and the spec of its runtime as it should be now (on `image`, if given);
        with touch, the family is marked active (unless disabled). The database is read in one
        trip to its thread."""
        image = await self._image(image)
        family, model, home = await self.db.aio(self._spec_inputs, family_id, touch)
        inputs = (family.name, image.id, model, home)  # all a spec depends on, past the settings
        known = self._specs.get(family_id)
        if known is None or known[0] != inputs:  # building one takes longer than a warm ensure
            spec = build_spec(self.settings, family, self._secret, image, self._plugins, model, home)
            known = self._specs[family_id] = inputs, spec
        return family, known[1]

    def _spec_inputs(self, family_id: uuid.UUID, touch: bool) -> tuple[Family, str, str | None]:
        """On the database thread: the family, the model, its verified WhatsApp number."""
        family = self.db.get_family(family_id)
        if family is None:
            raise FamilyNotFound(f"no family {family_id}")
        if touch and family.disabled_at is None:
            self.db.touch_family(family_id)
        model = self.db.get_settings("llm.model").get("llm.model") or self.settings.llm.model
        home = self.db.query_one(
            "SELECT number FROM whatsapp_numbers WHERE family_id = ? AND verified_at IS NOT NULL"
            " ORDER BY verified_at LIMIT 1",
            (str(family_id),),
        )
        return family, model, home["number"] if home else None

    def urls(self, runtime: Runtime) -> dict[str, str | None]:
        """Where the runtime's Hermes api_server and the sudo_chat and twilio_whatsapp listeners answer."""
        rt, address = self.settings.runtime, runtime.address
        return {
            "url": f"http://{address}:{rt.api_port}" if address else None,
            "chat_url": f"http://{address}:{rt.chat_port}" if address else None,
            "whatsapp_url": f"http://{address}:{rt.whatsapp_port}" if address else None,
        }

    # ensure

    async def ensure(self, family_id: uuid.UUID, priority: Priority = Priority.WAITING) -> Runtime:
        """Spawn if needed and wait until healthy; concurrent callers share one attempt, at the
        highest priority among them. A warm-up (nobody waiting on it) never evicts another
        family to make room, and starts only while the host has the memory for it."""
        shared = self._ensuring.get(family_id)
        if shared is None:
            claim = Claim(priority)
            task = asyncio.create_task(self._ensure(family_id, claim))
            self._ensuring[family_id] = task, claim
            task.add_done_callback(lambda _: self._ensuring.pop(family_id, None))
        else:
            task, claim = shared
            claim.escalate(priority)
        pending = self._claims.get(family_id)  # a recreation or revival of it, queued
        if pending is not None:
            pending.escalate(priority)
        # shield: a caller that disconnects must not cancel the spawn the others wait on
        return await asyncio.shield(task)

    async def _ensure(self, family_id: uuid.UUID, claim: Claim) -> Runtime:
        started = time.monotonic()
        path = "warm"
        async with self._lock(family_id):
            family, spec = await self._desired(family_id, touch=True)
            if family.disabled_at is not None:
                raise FamilyDisabled(f"family {family_id} is disabled: its agent does not run")
            runtime = self.index.get(spec.name)
            if runtime and runtime.running and runtime.config_hash == spec.config_hash:
                if runtime.container_id not in self._healthy:
                    path = "adopt"
                    runtime = await self._adopt(runtime, spec, claim)
            else:
                path = "cold"
                if runtime is not None:
                    await self._retire(runtime, spec.config_hash)
                runtime = await self._spawn(spec, claim)
        ENSURE_SECONDS.labels(path).observe(time.monotonic() - started)
        return runtime

    async def _adopt(self, runtime: Runtime, spec: RuntimeSpec, claim: Claim) -> Runtime:
        """Vouch for a running container this process did not start, or replace it. One that
        dies during the check (an earlier provisioner was stopping it when it was killed, or it
        crashed) or never answers is not a failed spawn: the family gets a fresh one."""
        try:
            await self._wait_healthy(runtime)
            return runtime
        except SpawnFailed as exc:
            log.info(f"recreating {runtime.name}: adopted, but {exc}", extra=fields(runtime=runtime.name))
            await self._remove(runtime, graceful=False)
            return await self._spawn(spec, claim)

    async def _remove(self, runtime: Runtime, graceful: bool = True) -> None:
        """Remove a container, and forget that this process saw it healthy."""
        await self.backend.remove(runtime.name, graceful=graceful)
        self.index.drop(runtime.name)
        self._healthy.discard(runtime.container_id)

    async def _retire(self, runtime: Runtime, wanted_hash: str) -> None:
        """Remove a container that may not serve: exited, or built from a stale config."""
        if runtime.running:
            reason = f"config hash {runtime.config_hash or 'none'} is stale (now {wanted_hash})"
        else:
            tail = await self.backend.logs(runtime.name, tail=10)
            reason = f"it is {runtime.state} (exit code {runtime.exit_code}); last logs:\n{tail}"
        log.info(f"recreating {runtime.name}: {reason}", extra=fields(runtime=runtime.name))
        await self._remove(runtime, graceful=runtime.running)

    async def _spawn(self, spec: RuntimeSpec, claim: Claim) -> Runtime:
        family = uuid.UUID(spec.create_args["labels"][LABEL_OWNER])
        self._claims[family] = claim
        try:
            async with self._slots.hold(claim):
                return await self._spawn_in_slot(spec, claim)
        finally:
            self._claims.pop(family, None)

    async def _spawn_in_slot(self, spec: RuntimeSpec, claim: Claim) -> Runtime:
        started = time.monotonic()
        async with self._room:
            if claim.priority == Priority.WARM_UP:
                self._admit_warm_up(spec.name)
            await self._make_room(spec.name, evict=claim.priority < Priority.WARM_UP)
            try:
                runtime = await self.backend.create(spec)
            except NameConflict:
                # Someone outside this process created it meanwhile; remove it and retry once.
                await self.backend.remove(spec.name, graceful=False)
                runtime = await self.backend.create(spec)
            self.index.put(runtime)
        try:
            await self._wait_healthy(runtime)
        except BaseException:
            SPAWNS.labels("failed").inc()
            # A container that never became healthy is never reused: the next ensure
            # starts clean. Its logs are already in the error.
            await self._remove(runtime, graceful=False)
            raise
        seconds = time.monotonic() - started
        SPAWNS.labels("ok").inc()
        SPAWN_SECONDS.observe(seconds)
        log.info(
            f"spawned {spec.name} in {seconds:.1f} s",
            extra=fields(runtime=spec.name, seconds=round(seconds, 2)),
        )
        return runtime

    def _admit_warm_up(self, name: str) -> None:
        """A warm-up starts only while the host has runtime.memory available for it."""
        available, needed = memory_available(), self.settings.runtime.memory_bytes
        if available < needed:
            WARM_UPS_DEFERRED.inc()
            raise AtCapacity(
                f"the host has {available >> 20} MiB available, less than runtime.memory "
                f"({self.settings.runtime.memory}): the warm-up of {name} waits for the next beat"
            )

    async def _wait_healthy(self, runtime: Runtime) -> None:
        """Poll /health under one deadline; fail fast when the container exits or is OOM-killed.

        Every tenth of a second for the first seconds (Hermes answers after about two: a slower
        poll would add up to its interval to every cold start), then backing off to a second.
        The container's state comes from the index, which Docker's events keep current, so the
        poll itself asks Docker nothing."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.settings.provisioner.health_timeout_sec
        delay = POLL_SEC
        while True:
            current = self.index.get(runtime.name)
            if current is not None and current.container_id != runtime.container_id:
                current = None  # another container of that name: ours is gone
            if current is None or not current.running:
                logs = await self.backend.logs(runtime.name)
                if current is None:
                    what = "was removed"
                elif current.oom_killed:
                    what = f"was OOM-killed (limit {self.settings.runtime.memory})"
                else:
                    what = f"exited with code {current.exit_code}"
                raise SpawnFailed(f"{runtime.name} {what} before it was healthy", logs)
            url = self.urls(current)["url"]
            if url and await self._healthy_at(url):
                self._healthy.add(current.container_id)
                return
            if loop.time() >= deadline:
                logs = await self.backend.logs(runtime.name)
                raise SpawnFailed(
                    f"{runtime.name} did not answer /health within "
                    f"{self.settings.provisioner.health_timeout_sec:.0f} s",
                    logs,
                )
            await asyncio.sleep(delay)
            if loop.time() - began > POLL_FAST_SEC:
                delay = min(delay * 1.5, 1.0)

    async def _healthy_at(self, url: str) -> bool:
        try:
            async with self._http.get(f"{url}/health") as resp:
                if resp.status != 200:
                    return False
                body = await resp.json(content_type=None)
                return isinstance(body, dict) and body.get("status") == "ok"
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    # revive

    async def revive(self, family_id: uuid.UUID) -> dict[str, bool]:
        """Recreate a runtime that died on its own (crashed, OOM-killed, killed, the engine
        restarted): its agent may owe replies it had taken, which the plugins' journals hand to
        the next process. Only a container still there and not running qualifies: one the
        provisioner stops is removed under the same lock, so a stop or an eviction is never
        undone. A family idle past runtime.idle_sec, or disabled, only has the dead container
        removed."""
        async with self._lock(family_id):
            family, spec = await self._desired(family_id)
            runtime = await self.backend.get(spec.name)
            if runtime is None or runtime.state in ("running", "paused"):  # gone, fine, or held on purpose
                return {"revived": False}
            await self._retire(runtime, spec.config_hash)
            idle = time.time() - (family.last_active_at or 0) > self.settings.runtime.idle_sec
            if idle or family.disabled_at is not None:
                return {"revived": False}
            await self._spawn(spec, Claim(Priority.RECREATE))
        REVIVALS.inc()
        log.info(f"revived {spec.name}", extra=fields(family=family_id))
        return {"revived": True}

    # stop

    async def stop(self, family_id: uuid.UUID, purge: bool = False) -> dict[str, bool]:
        """Stop and remove the container; the data volume stays unless purge."""
        async with self._lock(family_id):
            runtime = await self.backend.get(runtime_name(family_id))
            if runtime is not None:
                await self._remove(runtime)
            purged = purge and await self.backend.remove_volume(volume_name(family_id))
        log.info(
            f"stopped {runtime_name(family_id)}" + (" and purged its data" if purged else ""),
            extra=fields(family=family_id),
        )
        return {"stopped": runtime is not None, "purged": purged}

    # the data volume, for backup and restore

    async def export_volume(
        self,
        family_id: uuid.UUID,
        write: Callable[[bytes], Awaitable[None]],
        paused: Callable[[bool], Awaitable[None]] | None = None,
    ) -> float:
        """Pass a tar of the family's volume to `write`, its runtime paused meanwhile (so Hermes's
        files are copied consistent) and unpaused after, whatever happens; the seconds it was
        paused. A request in flight (a lease) is waited for first, up to restart_grace_sec:
        past that the copy is refused (Busy), since freezing a turn midway may cut it.
        `paused(running)` is told once the runtime is paused, or found not running."""
        await self.family(family_id)
        image = await self._image()
        async with self._lock(family_id):
            if not await self._await_quiet(family_id):
                raise Busy(
                    f"family {family_id} has a request in flight that did not end within "
                    f"{self.settings.provisioner.restart_grace_sec:g} s: its volume was not copied"
                )
            runtime = await self.backend.get(runtime_name(family_id))
            running = runtime is not None and runtime.running
            if running:
                await self.backend.pause(runtime.name)
            began = time.monotonic()
            try:
                if paused:
                    await paused(running)
                await self.backend.export_volume(family_id, image.id, write)
            finally:
                if running:
                    await self.backend.unpause(runtime.name)
            seconds = time.monotonic() - began if running else 0.0
        if running:
            log.info(
                f"copied the data volume of {runtime_name(family_id)}, paused {seconds:.1f} s",
                extra=fields(family=family_id),
            )
        return seconds

    async def import_volume(self, family_id: uuid.UUID, archive: IO[bytes]) -> None:
        """Stop the runtime and replace its volume by the tar's contents; the next ensure uses it."""
        await self.family(family_id)
        async with self._lock(family_id):
            await self._stop_for_copy(family_id)
            await self.backend.import_volume(family_id, (await self._image()).id, archive)
        log.info(f"restored the data volume of {runtime_name(family_id)}", extra=fields(family=family_id))

    async def _stop_for_copy(self, family_id: uuid.UUID) -> None:
        """As restart-all does: requests in flight get their grace, then the container goes."""
        await self._await_quiet(family_id)
        runtime = await self.backend.get(runtime_name(family_id))
        if runtime is not None:
            await self._remove(runtime)

    # listing

    def describe(self, runtime: Runtime, family: Family | None) -> dict[str, Any]:
        """The runtime as other daemons are told of it (sudo_core.provisioner_client.RuntimeView)."""
        return {
            "family": str(runtime.owner) if runtime.owner else None,
            "name": runtime.name,
            "state": runtime.state,
            **self.urls(runtime),
            "image": runtime.image,
            "config_hash": runtime.config_hash,
            "last_active_at": family.last_active_at if family else None,
        }

    async def list(self, stats: bool = False) -> list[dict[str, Any]]:
        """Every runtime of this installation; with stats, the memory each running one uses."""
        runtimes = await self.backend.list()
        RUNNING.set(sum(r.running for r in runtimes))
        families = {f.id: f for f in await self.db.aio(self.db.list_families)}
        described = [self.describe(r, families.get(r.owner) if r.owner else None) for r in runtimes]
        if stats:
            running = [r.name for r in runtimes if r.running]
            samples = await asyncio.gather(*(self.backend.memory_used(name) for name in running))
            usage = dict(zip(running, samples, strict=True))
            for entry in described:
                entry["memory_bytes"] = usage.get(entry["name"])
        return described

    async def get(self, family_id: uuid.UUID) -> dict[str, Any] | None:
        runtime = await self.backend.get(runtime_name(family_id))
        if runtime is None:
            return None
        try:
            family, spec = await self._desired(family_id)
        except FamilyNotFound:
            return self.describe(runtime, None)
        return self.describe(runtime, family) | {"stale": runtime.config_hash != spec.config_hash}

    # eviction

    async def _make_room(self, name: str, evict: bool) -> None:
        """Keep runtime.max_running: past it, stop the runtimes least recently active that are
        not in use (no ensure, stop or copy holds their lock, no request in flight holds a
        lease); AtCapacity if `evict` is false or none may go."""
        cap = self.settings.runtime.max_running
        running = [r for r in self.index.running() if r.name != name]
        excess = len(running) - cap + 1
        if excess <= 0:
            return
        if not evict:
            raise AtCapacity(
                f"{len(running)} runtimes run (runtime.max_running): a warm-up waits for a place"
            )
        families = {f.id: f for f in await self.db.aio(self.db.list_families)}

        def last_active(runtime: Runtime) -> float:  # a family gone since counts as oldest
            family = families.get(runtime.owner) if runtime.owner else None
            return (family.last_active_at or 0.0) if family else 0.0

        for runtime in sorted(running, key=last_active):
            if excess == 0:
                return
            if runtime.owner is None:
                continue
            lock = self._lock(runtime.owner)
            if lock.locked():  # in use, or someone's ensure is on its way: never wait for it
                continue
            async with lock:
                if await self.db.aio(self.db.has_active_lease, runtime.owner):
                    continue
                await self._remove(runtime)
            MAKE_ROOM.inc()
            excess -= 1
            log.info(
                f"stopped {runtime.name}, the least recently active, to make room for {name}",
                extra=fields(family=runtime.owner, room_for=name),
            )
        if excess > 0:
            raise AtCapacity(
                f"all {cap} places for running agents are in use (runtime.max_running); try again in a minute"
            )

    async def evict_idle(self, idle_sec: float | None = None) -> dict[str, Any]:
        """Stop runtimes idle longer than idle_sec, never one in use.

        Each family is checked under its lock, after the check began: an ensure in progress
        holds the lock, a request in flight holds a lease, and any touch after `began` moves
        last_active_at past the cutoff.
        """
        limit = self.settings.runtime.idle_sec if idle_sec is None else idle_sec
        began = time.time()
        cutoff = began - limit
        evicted, kept = [], 0
        for runtime in await self.backend.list():
            if not runtime.running or runtime.owner is None:
                continue
            async with self._lock(runtime.owner):
                family = await self.db.aio(self.db.get_family, runtime.owner)
                if family is None:
                    continue  # an orphan: reconcile removes it
                # A disabled family's agent goes too (it may have been woken as it was disabled).
                idle = (family.last_active_at or 0) <= cutoff or family.disabled_at is not None
                if not idle or await self.db.aio(self.db.has_active_lease, family.id):
                    kept += 1
                    continue
                await self._remove(runtime)
            EVICTIONS.inc()
            evicted.append(str(runtime.owner))
            log.info(f"evicted idle {runtime.name}", extra=fields(family=runtime.owner))
        return {"evicted": evicted, "kept": kept, "idle_sec": limit}

    async def measure_volumes(self) -> dict[str, Any]:
        """Record the size of every family's data volume (sudo-api holds back the messages of a
        family past runtime.volume_quota); the families past it."""
        sizes = await self.backend.volume_sizes()
        families = await self.db.aio(self.db.list_families)
        measured = {f.id: sizes[volume_name(f.id)] for f in families if volume_name(f.id) in sizes}
        quota = self.settings.runtime.volume_quota_bytes
        await self.db.aio(usage.record_volumes, self.db, measured, quota, time.time())
        over = sorted(str(f) for f, size in measured.items() if size > quota)
        return {"measured": len(measured), "quota_bytes": quota, "over_quota": over}

    # reconcile

    async def reconcile(self) -> dict[str, Any]:
        """Adopt healthy containers; remove orphans, legacy containers and dead ones.

        Runs at every start: the provisioner keeps no state of its own, so whatever a crash
        left behind is found here by name and label.
        """
        families = {f.id for f in await self.db.aio(self.db.list_families)}
        removed: list[dict[str, str]] = []
        adopted = 0
        for runtime in await self.backend.list():
            if runtime.owner is None:
                reason = "legacy" if runtime.name.startswith("hermes-user-usr_") else None
                if reason is None:
                    log.warning(f"leaving {runtime.name} alone: its name holds no family id")
                    continue
                await self.backend.remove(runtime.name, graceful=False)
            else:
                async with self._lock(runtime.owner):
                    current = await self.backend.get(runtime.name)  # re-read under the lock
                    if current is None:
                        continue
                    if current.owner not in families:
                        reason = "family no longer exists"
                    elif not current.running:
                        reason = f"{current.state} (exit code {current.exit_code})"
                    else:
                        adopted += 1  # if its config is stale, its next ensure recreates it
                        continue
                    await self._remove(current, graceful=False)
            REMOVALS.inc()
            removed.append({"name": runtime.name, "reason": reason})
            log.info(f"removed {runtime.name}: {reason}", extra=fields(runtime=runtime.name))
        return {"adopted": adopted, "removed": removed}

    # restart-all, and an image rolling through the fleet

    async def restart_all(self, progress: Progress) -> dict[str, Any]:
        """Recreate every running runtime, a bounded number at once; failures are reported."""
        targets = [r.owner for r in await self.backend.list() if r.running and r.owner]
        return await self.recreate(targets, progress)

    async def recreate(
        self,
        families: list[uuid.UUID],
        progress: Progress,
        *,
        only_stale: bool = False,
        max_failures: int | None = None,
    ) -> dict[str, Any]:
        """Recreate each family's runtime, restart_concurrency at once, in the list's order, at
        restart priority (a spawn someone waits on goes first). With only_stale, a runtime already
        running on the current config is kept, and a family deleted or disabled since is passed
        over. Once more than max_failures failed, the families not begun yet are left as they are
        (`stopped`). Failures are reported, and the others carry on."""
        total = len(families)
        concurrency = self.restart_concurrency()
        await progress({"event": "start", "total": total, "concurrency": concurrency})
        slots = asyncio.Semaphore(concurrency)
        done = kept = 0
        failed: list[dict[str, str]] = []

        def stopped() -> bool:
            return max_failures is not None and len(failed) > max_failures

        async def one(family: uuid.UUID) -> None:
            nonlocal done, kept
            async with slots:
                if stopped():
                    return
                started = time.monotonic()
                try:
                    event = {"event": "restarted" if await self._recreate(family, only_stale) else "kept"}
                except Exception as exc:  # reported, and the others carry on
                    log.exception(f"recreating {runtime_name(family)} failed")
                    failed.append({"family": str(family), "error": str(exc)})
                    event = {"event": "failed", "error": str(exc)}
                done += 1
                kept += event["event"] == "kept"
                await progress(
                    event
                    | {
                        "family": str(family),
                        "done": done,
                        "total": total,
                        "seconds": round(time.monotonic() - started, 2),
                    }
                )

        await asyncio.gather(*(one(f) for f in families))
        summary = {"event": "done", "total": total, "restarted": done - kept - len(failed), "kept": kept}
        return summary | {"failed": failed, "stopped": stopped()}

    def restart_concurrency(self) -> int:
        """provisioner.restart_concurrency, or (0) what the host's cores and memory allow now."""
        if self.settings.provisioner.restart_concurrency:
            return self.settings.provisioner.restart_concurrency
        by_memory = memory_available() // self.settings.runtime.memory_bytes
        return max(1, min(os.cpu_count() or 1, by_memory))

    async def _recreate(self, family_id: uuid.UUID, only_stale: bool = False) -> bool:
        """Remove the family's runtime and make it again; whether it did (see recreate)."""
        async with self._lock(family_id):
            try:
                family, spec = await self._desired(family_id)
            except FamilyNotFound:
                if only_stale:
                    return False
                raise
            current = self.index.get(spec.name)
            if only_stale and (
                family.disabled_at is not None
                or (current is not None and current.running and current.config_hash == spec.config_hash)
            ):
                return False
            await self._replace(family_id, spec)
            return True

    async def _replace(self, family_id: uuid.UUID, spec: RuntimeSpec) -> Runtime:
        """Under the family's lock: its requests in flight given their grace, its runtime removed
        and made again from `spec`."""
        await self._await_quiet(family_id)
        current = await self.backend.get(spec.name)
        if current is not None:
            await self._remove(current)
        return await self._spawn(spec, Claim(Priority.RECREATE))

    async def canary(
        self, family_id: uuid.UUID, image: ImageRef, passed: Callable[[], Awaitable[None]]
    ) -> None:
        """Recreate the family's runtime on `image`, have it answer a chat turn (Hermes, through
        the gateway, to the provider), then call `passed` still under the family's lock, so no
        ensure puts it back on the fleet's image before the fleet's image is this one. SpawnFailed
        if it does not come up or answer; what it made is removed then."""
        async with self._lock(family_id):
            _, spec = await self._desired(family_id, image=image)
            runtime = await self._replace(family_id, spec)
            try:
                await self._turn(runtime, family_id)
            except BaseException:
                await self._remove(runtime, graceful=False)
                raise
            await passed()

    async def _turn(self, runtime: Runtime, family_id: uuid.UUID) -> None:
        """One chat turn through the runtime's api_server, as the voice bridge has them."""
        url = self.urls(runtime)["url"]
        timeout = self.settings.image.canary_timeout_sec
        try:
            async with self._http.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {api_key_for(self._secret, family_id)}"},
                json={"model": "hermes-agent", "messages": [{"role": "user", "content": CANARY_PROMPT}]},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logs = await self.backend.logs(runtime.name)
            raise SpawnFailed(
                f"{runtime.name} answered no chat turn within {timeout:g} s: {exc!r}", logs
            ) from None
        try:
            answer = body["choices"][0]["message"]["content"]
        except (TypeError, KeyError, IndexError):
            answer = None
        if status != 200 or not isinstance(answer, str) or not answer.strip():
            logs = await self.backend.logs(runtime.name)
            raise SpawnFailed(f"{runtime.name} answered the chat turn {status} without a reply: {body}", logs)

    async def running_families(self) -> list[uuid.UUID]:
        """The families whose runtimes run, the least recently active first."""
        families = {f.id: f for f in await self.db.aio(self.db.list_families)}
        owners = [r.owner for r in await self.backend.list() if r.running and r.owner in families]
        return sorted(owners, key=lambda f: families[f].last_active_at or 0.0)

    async def canary_family(self, running: list[uuid.UUID]) -> uuid.UUID | None:
        """Whose runtime tries a new image first: the least recently active running family
        holding no request in flight, else any running one; with none running, the least
        recently active enabled family (its runtime is started for it)."""
        families = {f.id: f for f in await self.db.aio(self.db.list_families) if f.disabled_at is None}
        running = [f for f in running if f in families]
        for family in running:
            if not await self.db.aio(self.db.has_active_lease, family):
                return family
        if running:
            return running[0]
        idlest = sorted(families.values(), key=lambda f: f.last_active_at or 0.0)
        return idlest[0].id if idlest else None

    async def _await_quiet(self, family_id: uuid.UUID) -> bool:
        """Give requests in flight (leases) up to restart_grace_sec to finish; whether they did."""
        deadline = time.monotonic() + self.settings.provisioner.restart_grace_sec
        while time.monotonic() < deadline:
            if not await self.db.aio(self.db.has_active_lease, family_id):
                return True
            await asyncio.sleep(0.5)
        return not await self.db.aio(self.db.has_active_lease, family_id)
