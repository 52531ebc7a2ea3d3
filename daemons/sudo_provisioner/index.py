"""The provisioner's picture of its runtimes, held in memory and kept current by the engine.

A warm ensure answers from here without a call to the engine. The picture is the engine's
list, taken when its change stream opens and again whenever the stream opens anew after a
break, then moved on by each change: a start, a death, an OOM kill, a removal. The
provisioner's own creations and removals go in as it makes them, so it never waits for their
echo. The list is taken after the stream is open, so whatever happens during the list comes
after it as a change: the picture can lag the engine by an event, never stay wrong. What it
cannot know (whether Hermes answers; a death whose event is on its way) the manager still asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from .backend import BackendError, Change, Runtime, RuntimeBackend
from .spec import Image

log = logging.getLogger(__name__)


class RuntimeIndex:
    def __init__(self, backend: RuntimeBackend) -> None:
        self._backend = backend
        self._runtimes: dict[str, Runtime] = {}
        self._images: dict[str, Image] = {}
        self._writes: dict[str, int] = {}
        """Per name, how many times this process put or dropped it: an answer the engine gave
        before one of those is older than the picture and is not taken."""
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the engine's changes; return once the first list is in."""
        self._task = asyncio.create_task(self._follow(), name="runtime-index")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():  # the stream ended before the first list: say why
            self._task.result()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, name: str) -> Runtime | None:
        return self._runtimes.get(name)

    def running(self) -> list[Runtime]:
        return [r for r in self._runtimes.values() if r.running]

    def put(self, runtime: Runtime) -> None:
        self._runtimes[runtime.name] = runtime
        self._writes[runtime.name] = self._writes.get(runtime.name, 0) + 1

    def drop(self, name: str) -> None:
        self._runtimes.pop(name, None)
        self._writes[name] = self._writes.get(name, 0) + 1

    async def image(self, ref: str) -> Image:
        """The image `ref` points at, resolved once and again after any image changes."""
        image = self._images.get(ref)
        if image is None:
            image = self._images[ref] = await self._backend.image(ref)
        return image

    async def _follow(self) -> None:
        async for change in self._backend.changes():
            try:
                await self._apply(change)
            except BackendError as exc:  # the engine went away mid-change: its stream breaks too
                log.warning(f"runtime index: {change.kind} of {change.name or 'all'} not applied: {exc}")
            except Exception:  # never stop following: a picture no longer kept would mislead
                log.exception(f"runtime index: {change.kind} of {change.name or 'all'} not applied")

    async def _apply(self, change: Change) -> None:
        if change.kind == "resync":
            writes = dict(self._writes)
            listed = {r.name: r for r in await self._backend.list()}
            for name, count in self._writes.items():  # put or dropped during the list: ours is newer
                if writes.get(name) != count:
                    listed.pop(name, None)
                    if name in self._runtimes:
                        listed[name] = self._runtimes[name]
            self._runtimes = listed
            self._images.clear()
            self._ready.set()
            log.info(f"runtime index: {len(listed)} runtime(s), {len(self.running())} running")
            return
        if change.kind == "image":
            self._images.clear()
            return
        known = self._runtimes.get(change.name)
        if known is not None and known.container_id == change.container_id:
            if change.kind == "destroy":
                del self._runtimes[change.name]
            elif change.kind == "die":
                self._runtimes[change.name] = dataclasses.replace(
                    known, state="exited", exit_code=change.exit_code
                )
            elif change.kind == "oom":
                self._runtimes[change.name] = dataclasses.replace(known, oom_killed=True)
            elif change.kind == "start":
                self._runtimes[change.name] = dataclasses.replace(
                    known, state="running", oom_killed=False, exit_code=None
                )
        elif change.kind == "start":  # a container this picture has not seen: ask for it whole
            writes = self._writes.get(change.name, 0)
            runtime = await self._backend.get(change.name)
            if runtime is not None and self._writes.get(change.name, 0) == writes:
                self._runtimes[change.name] = runtime
