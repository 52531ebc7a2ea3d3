"""An in-memory RuntimeBackend, so that the lifecycle rules of runtimes.py run in seconds.

It stands in for no outside service. The real-engine tests (tests/integration,
tests/reliability) stay the proof that DockerBackend keeps the contract and that Hermes starts;
this backend lets the rules above it (shared ensures, the family lock, eviction, revival,
priorities, admission) be driven step by step. A container "runs" as soon as it is created,
reached at 127.0.0.1, where the test's own HTTP server answers /health as Hermes would. A test
holds creations back with `gate`, makes a container die with `kill`, and has the containers of
an image (`crash_images`, by id) or of a family (`crash_names`) exit as soon as they start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

from sudo_core.families import volume_name
from sudo_provisioner.backend import Change, ImageMissing, NameConflict, Runtime
from sudo_provisioner.spec import LABEL_OWNER, Image, RuntimeSpec


class FakeBackend:
    def __init__(self) -> None:
        self.containers: dict[str, Runtime] = {}
        self.volumes: dict[str, bytes] = {}
        self.images = {"sudo-hermes:test": Image("sudo-hermes:test", "sha256:" + "1" * 64, ("/entry",))}
        self.created: list[str] = []
        """Names, in the order their creation began."""
        self.calls = 0
        """Calls the manager made, of every kind but the change stream."""
        self.crash_images: set[str] = set()
        self.crash_names: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self._changes: asyncio.Queue[Change] = asyncio.Queue()

    def _call(self) -> None:
        self.calls += 1

    async def prepare(self) -> None:
        self._call()

    def build(self, ref: str) -> Image:
        """A new image named `ref`, as `docker build -t ref` makes one."""
        image = Image(ref, "sha256:" + uuid.uuid4().hex * 2, ("/entry",))
        self.images[ref] = image
        self._changes.put_nowait(Change("image"))
        return image

    async def image(self, ref: str) -> Image:
        self._call()
        if ref in self.images:
            return self.images[ref]
        by_id = [i for i in self.images.values() if i.id == ref]
        if not by_id:
            raise ImageMissing(f"no such image: {ref}")
        return dataclasses.replace(by_id[0], ref=ref)

    async def tag(self, image_id: str, ref: str) -> None:
        self._call()
        self.images[ref] = dataclasses.replace(await self.image(image_id), ref=ref)
        self._changes.put_nowait(Change("image"))

    async def get(self, name: str) -> Runtime | None:
        self._call()
        return self.containers.get(name)

    async def list(self) -> list[Runtime]:
        self._call()
        return list(self.containers.values())

    async def create(self, spec: RuntimeSpec) -> Runtime:
        self._call()
        if spec.name in self.containers:
            raise NameConflict(spec.name)
        self.created.append(spec.name)
        await self.gate.wait()
        self.volumes.setdefault(spec.volume, b"")
        runtime = Runtime(
            name=spec.name,
            owner=uuid.UUID(spec.create_args["labels"][LABEL_OWNER]),
            state="running",
            address="127.0.0.1",
            image=spec.create_args["image"],
            config_hash=spec.config_hash,
            container_id=uuid.uuid4().hex,
        )
        self.containers[spec.name] = runtime
        self._changes.put_nowait(Change("start", runtime.name, runtime.container_id))
        if spec.name in self.crash_names or runtime.image in self.crash_images:
            self.kill(spec.name)  # exited by the time the engine is asked how it is
            return self.containers[spec.name]
        return runtime

    def kill(self, name: str, oom: bool = False) -> None:
        """The container dies on its own, as Docker would report it."""
        runtime = self.containers[name]
        self.containers[name] = dataclasses.replace(runtime, state="exited", exit_code=137, oom_killed=oom)
        if oom:
            self._changes.put_nowait(Change("oom", name, runtime.container_id))
        self._changes.put_nowait(Change("die", name, runtime.container_id, 137))

    async def remove(self, name: str, *, graceful: bool = True) -> None:
        self._call()
        runtime = self.containers.pop(name, None)
        if runtime is not None:
            if runtime.running:
                self._changes.put_nowait(Change("die", name, runtime.container_id, 0))
            self._changes.put_nowait(Change("destroy", name, runtime.container_id))

    async def remove_volume(self, volume: str) -> bool:
        self._call()
        return self.volumes.pop(volume, None) is not None

    async def pause(self, name: str) -> None:
        self._call()
        runtime = self.containers[name]
        assert runtime.running, f"pausing {name}, which is {runtime.state}"
        self.containers[name] = dataclasses.replace(runtime, state="paused")

    async def unpause(self, name: str) -> None:
        self._call()
        self.containers[name] = dataclasses.replace(self.containers[name], state="running")

    async def export_volume(
        self, family: uuid.UUID, image_id: str, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        self._call()
        await write(self.volumes.setdefault(volume_name(family), b""))

    async def import_volume(self, family: uuid.UUID, image_id: str, archive: IO[bytes]) -> None:
        self._call()
        self.volumes[volume_name(family)] = archive.read()

    async def volume_sizes(self) -> dict[str, int]:
        self._call()
        return {name: len(data) for name, data in self.volumes.items()}

    async def memory_used(self, name: str) -> int | None:
        self._call()
        runtime = self.containers.get(name)
        return 100 << 20 if runtime and runtime.running else None

    async def logs(self, name: str, tail: int = 30) -> str:
        self._call()
        return f"{name}: the fake backend keeps no output"

    async def changes(self) -> AsyncIterator[Change]:
        yield Change("resync")
        while True:
            yield await self._changes.get()

    async def close(self) -> None:
        pass
