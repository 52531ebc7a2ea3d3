"""What the provisioner asks of a container engine: the RuntimeBackend contract.

Narrow, in the manner of JupyterHub's Spawner: create, get, list, remove, logs, the data
volumes, an image by name (and a name given to one), and a stream of changes. Errors are the
engine's trouble in words that name no engine, so that runtimes.py and server.py know nothing
of Docker. DockerBackend (docker_backend.py) is the one implementation;
tests/unit/fake_backend.py keeps the same contract in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Protocol

from .spec import Image, RuntimeSpec


class BackendError(RuntimeError):
    """The engine refused or failed a call; the text says why."""


class EngineUnavailable(BackendError):
    """The engine does not answer (stopped, restarting): a moment's problem, not a bad request."""


class ImageMissing(BackendError):
    """The runtime image is not on the engine."""


class NameConflict(BackendError):
    """A container with the family's name appeared between our check and our create."""


@dataclass(frozen=True)
class Runtime:
    name: str
    owner: uuid.UUID | None
    """The family it serves; None for a container whose name and labels say nothing valid."""
    state: str
    """The engine's state: created, running, restarting, exited, paused, dead."""
    address: str | None
    image: str
    config_hash: str
    container_id: str
    oom_killed: bool = False
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Change:
    """Something the engine did that the provisioner's index must know.

    kind is "resync" (the stream began, or began again after a break: anything may have changed
    meanwhile), "start", "die", "oom" or "destroy" (of the runtime `name`, container
    `container_id`), or "image" (an image was tagged, pulled, removed: resolve it again).
    """

    kind: str
    name: str = ""
    container_id: str = ""
    exit_code: int | None = None


class RuntimeBackend(Protocol):
    async def prepare(self) -> None:
        """Make what runtimes need on the host (their network), if missing."""

    async def image(self, ref: str) -> Image:
        """The image `ref` (a name, or a content id) points at now; ImageMissing if none."""

    async def tag(self, image_id: str, ref: str) -> None:
        """Give the image `ref` (repository:tag) as a name too, moving the name if another image
        had it: an image named is never pruned, so a rollback finds it."""

    async def get(self, name: str) -> Runtime | None: ...

    async def list(self) -> list[Runtime]:
        """Every runtime of this installation, running or not."""

    async def create(self, spec: RuntimeSpec) -> Runtime:
        """Create the data volume if missing and the container, and start it; NameConflict if a
        container of that name exists."""

    async def remove(self, name: str, *, graceful: bool = True) -> None:
        """Stop (gracefully: a signal, then a kill after 10 s) and remove; gone already is fine."""

    async def remove_volume(self, volume: str) -> bool: ...

    async def pause(self, name: str) -> None:
        """Freeze the container's processes (cgroup freezer), for a consistent copy of its volume."""

    async def unpause(self, name: str) -> None: ...

    async def export_volume(
        self, family: uuid.UUID, image_id: str, write: Callable[[bytes], Awaitable[None]]
    ) -> None: ...

    async def import_volume(self, family: uuid.UUID, image_id: str, archive: IO[bytes]) -> None: ...

    async def volume_sizes(self) -> dict[str, int]: ...

    async def memory_used(self, name: str) -> int | None: ...

    async def logs(self, name: str, tail: int = 30) -> str: ...

    def changes(self) -> AsyncIterator[Change]:
        """The engine's changes as they happen, forever; a "resync" first and after every break."""
        ...

    async def close(self) -> None: ...
