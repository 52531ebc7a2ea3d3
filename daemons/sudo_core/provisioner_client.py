"""Client for the provisioner's HTTP API on its unix socket: the only way other daemons reach Docker."""

from __future__ import annotations

import contextlib
import json
import tarfile
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import aiohttp
from prometheus_client import Counter, Gauge


def volume_tar_problem(file: IO[bytes]) -> str | None:
    """Why the provisioner refuses this (seekable) file as a volume's contents, or None.

    Reads it through: a cut or corrupt tar fails here, not halfway into a volume.
    """
    file.seek(0)
    try:
        with tarfile.open(fileobj=file, mode="r:") as archive:
            for member in archive:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    return f"{member.name!r} points outside the volume"
    except (tarfile.TarError, EOFError) as exc:
        return str(exc)
    return None


@dataclass
class Pause:
    """How long a family's runtime was paused for a copy of its volume, as the client saw it: from
    the provisioner's answer (sent once paused) to the tar's end; 0 if it was not running."""

    seconds: float = 0.0


@dataclass(frozen=True)
class RuntimeView:
    """One family's runtime as the provisioner tells other daemons of it: the answer of ensure,
    get and list (its JSON is `to_json()`). Not sudo_provisioner.backend.Runtime, the container
    as the provisioner itself keeps it."""

    family: uuid.UUID | None
    """The family it serves; None for a container whose name and labels say nothing valid."""
    name: str
    state: str
    """The engine's state: created, running, restarting, exited, paused, dead."""
    url: str | None
    """Hermes's api_server; this and the listeners' URLs are None when it has no address."""
    chat_url: str | None
    """The sudo_chat plugin's listener."""
    whatsapp_url: str | None
    """The twilio_whatsapp plugin's listener."""
    image: str
    config_hash: str
    last_active_at: float | None
    """When its family was last active; None if the family is gone, and in ensure's answer."""
    memory_bytes: int | None = None
    """Only from list(stats=True): the memory it uses; None if it is not running."""
    stale: bool | None = None
    """Only from get: whether its config is not what the family's runtime should be now (None
    if the family is gone)."""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RuntimeView:
        family = body["family"]
        return cls(
            family=uuid.UUID(family) if family else None,
            name=body["name"],
            state=body["state"],
            url=body["url"],
            chat_url=body["chat_url"],
            whatsapp_url=body["whatsapp_url"],
            image=body["image"],
            config_hash=body["config_hash"],
            last_active_at=body["last_active_at"],
            memory_bytes=body.get("memory_bytes"),
            stale=body.get("stale"),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"family": str(self.family) if self.family else None}


# What sudo-api's metrics tell of the provisioner, which is not scraped (it exits when idle):
# whether its socket takes connections, and the runtime starts it reported failed.
SOCKET_UP = Gauge(
    "sudo_provisioner_socket_up",
    "1 if the provisioner's socket took this process's last connection, 0 if it was refused",
    ["socket"],  # no series in a process that never called it
)
SPAWN_FAILURES = Counter(
    "sudo_runtime_spawn_failures_total",
    "Runtimes the provisioner failed to start for this process (they exited or never became healthy)",
)


class ProvisionerError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"provisioner answered {status}: {body.get('error', body)}")
        self.status = status
        self.body = body


# A volume may take long to copy: no total limit, only one on each wait for the next bytes.
VOLUME_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
# A fleet's change waits on spawns (each up to provisioner.health_timeout_sec) between events.
FLEET_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)


def runtime_view(body: Any) -> RuntimeView:
    """A runtime as the provisioner answered it. An answer of another shape (a provisioner of
    another version, still running through an upgrade) is a ProvisionerError (502), which every
    caller already handles: a watcher loop must not die of a KeyError."""
    try:
        return RuntimeView.from_json(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisionerError(502, {"error": f"unexpected runtime from the provisioner ({exc!r})"}) from exc


class ProvisionerClient:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        self._socket_up = SOCKET_UP.labels(str(socket_path))
        self._session = aiohttp.ClientSession(
            # A connection per request: the provisioner exits when idle and restarts at any
            # time, so a pooled connection would often be one it already closed. No cap on
            # them (aiohttp's default is 100): an ensure may wait minutes for a spawn slot, and
            # a hundred of them must not hold back a quick call; the provisioner queues spawns.
            connector=aiohttp.UnixConnector(path=str(socket_path), force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def __aenter__(self) -> ProvisionerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request, its connection counted in SOCKET_UP and a failed spawn (502) in SPAWN_FAILURES."""
        try:
            response = await self._session.request(method, f"http://provisioner{path}", **kwargs)
        except aiohttp.ClientConnectorError:  # refused, or no socket at all
            self._socket_up.set(0)
            raise
        self._socket_up.set(1)
        if response.status == 502:  # SpawnFailed, the one 502 the provisioner gives
            SPAWN_FAILURES.inc()
        async with response:
            yield response

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._request(method, path, **kwargs) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ProvisionerError(resp.status, body if isinstance(body, dict) else {})
            return body

    async def ensure(self, family: uuid.UUID, warm_up: bool = False) -> RuntimeView:
        """Start the family's runtime if need be; it runs and answers when this returns. A
        warm-up (nobody waits on it) takes no other family's place when the host runs its most
        (runtime.max_running)."""
        params = {"warm_up": "true"} if warm_up else {}
        return runtime_view(await self._call("POST", f"/v1/runtimes/{family}/ensure", params=params))

    async def measure_volumes(self) -> dict[str, Any]:
        """Record every family's volume size; {"measured", "quota_bytes", "over_quota": [ids]}."""
        return await self._call("POST", "/v1/volumes/measure")

    async def revive(self, family: uuid.UUID) -> dict[str, Any]:
        """Recreate the runtime if it died on its own; {"revived": bool}."""
        return await self._call("POST", f"/v1/runtimes/{family}/revive")

    async def get(self, family: uuid.UUID) -> RuntimeView:
        """The family's runtime, with `stale`; ProvisionerError 404 if it has none."""
        return runtime_view(await self._call("GET", f"/v1/runtimes/{family}"))

    async def list(self, stats: bool = False) -> list[RuntimeView]:
        """Every runtime; with stats, each running one's memory_bytes (slower: a sample each)."""
        params = {"stats": "true"} if stats else {}
        body = await self._call("GET", "/v1/runtimes", params=params)
        if not isinstance(body, dict) or not isinstance(body.get("runtimes"), list):
            raise ProvisionerError(502, {"error": "the provisioner's list of runtimes is not one"})
        return [runtime_view(runtime) for runtime in body["runtimes"]]

    async def stop(self, family: uuid.UUID, purge: bool = False) -> dict[str, Any]:
        params = {"purge": "true"} if purge else {}
        return await self._call("DELETE", f"/v1/runtimes/{family}", params=params)

    async def evict_idle(self, idle_sec: float | None = None) -> dict[str, Any]:
        body = {} if idle_sec is None else {"idle_sec": idle_sec}
        return await self._call("POST", "/v1/runtimes/evict-idle", json=body)

    async def reconcile(self) -> dict[str, Any]:
        return await self._call("POST", "/v1/runtimes/reconcile")

    async def restart_all(self) -> AsyncIterator[dict[str, Any]]:
        """Progress events as the provisioner streams them (NDJSON), ending with a "done" event."""
        async for event in self._stream("/v1/runtimes/restart-all"):
            yield event

    async def image(self) -> dict[str, Any]:
        """The runtimes' image and the previous one, an upgrade under way, the last upgrades and
        rollbacks (sudo_core.runtime_image.summary)."""
        return await self._call("GET", "/v1/image")

    async def image_upgrade(self, ref: str) -> AsyncIterator[dict[str, Any]]:
        """Canary, then the fleet, on the local image `ref`; progress as restart_all's, the "done"
        event's `outcome` "upgraded" or "rolled back". 409 if it cannot begin."""
        async for event in self._stream("/v1/image/upgrade", {"ref": ref}):
            yield event

    async def image_rollback(self) -> AsyncIterator[dict[str, Any]]:
        """Back to the previous image; progress as restart_all's."""
        async for event in self._stream("/v1/image/rollback"):
            yield event

    async def _stream(self, path: str, body: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """A change of the whole fleet, which may take long: no limit but on connecting."""
        async with self._request("POST", path, json=body, timeout=FLEET_TIMEOUT) as resp:
            if resp.status >= 400:
                raise ProvisionerError(resp.status, await resp.json(content_type=None))
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    if event.get("event") == "failed":
                        SPAWN_FAILURES.inc()
                    yield event

    async def get_volume(self, family: uuid.UUID, pause: Pause | None = None) -> AsyncIterator[bytes]:
        """A tar of the family's data volume, chunk by chunk, taken with its runtime paused (after
        any request in flight ends: 409 if none ends in time). `pause` is told how long."""
        async with self._request("GET", f"/v1/runtimes/{family}/volume", timeout=VOLUME_TIMEOUT) as resp:
            if resp.status >= 400:
                raise ProvisionerError(resp.status, await resp.json(content_type=None))
            began = time.monotonic()
            async for chunk in resp.content.iter_chunked(1 << 20):
                yield chunk
            if pause is not None and resp.headers.get("X-Sudo-Paused") == "true":
                pause.seconds = time.monotonic() - began

    async def put_volume(self, family: uuid.UUID, tar: AsyncIterable[bytes]) -> dict[str, Any]:
        """Replace the family's data volume by this tar (as get_volume gives it), sent as it is read."""
        url = f"/v1/runtimes/{family}/volume"
        return await self._call("PUT", url, data=tar, timeout=VOLUME_TIMEOUT)
