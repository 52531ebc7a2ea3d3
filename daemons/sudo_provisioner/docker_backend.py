"""The Docker backend: the only code that talks to the Docker engine (backend.RuntimeBackend).

Every state it reports is read from Docker (labels, container state, events); it keeps none
of its own. The docker SDK blocks, so every call runs on a small thread pool, never on the
event loop, and the event stream is read by a thread of its own. Docker's errors leave this
module as the contract's: BackendError and its kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from sudo_core.config import RuntimeSettings
from sudo_core.families import RUNTIME_PREFIX, volume_name
from sudo_core.logs import fields

from .backend import BackendError, Change, EngineUnavailable, ImageMissing, NameConflict, Runtime
from .spec import DATA_DIR, LABEL_HASH, LABEL_IMAGE, LABEL_OWNER, LABEL_SCOPE, Image, RuntimeSpec

T = TypeVar("T")
log = logging.getLogger(__name__)

BRIDGE_NAME = "com.docker.network.bridge.name"
DF_TIMEOUT_SEC = 900
DF_WAIT_SEC = 240  # for another caller's count: within ProvisionerClient's 300 s
CONTAINER_CHANGES = ("start", "die", "oom", "destroy")
IMAGE_CHANGES = ("pull", "tag", "untag", "delete", "import", "load")


class DockerRefused(BackendError):
    """The engine answered a call with an error: its HTTP status and its explanation."""

    def __init__(self, exc: docker.errors.APIError) -> None:
        self.status = exc.status_code
        self.explanation = str(exc.explanation or exc)
        super().__init__(f"the Docker engine refused: {self.explanation}")


class DockerMissing(DockerRefused):
    """No such container, volume or network (404): for most calls, an answer rather than a fault."""


class Addresses:
    """The runtime network's addresses, handed out in turn round the subnet. Docker hands a new
    container the lowest free address, so a family's runtime stopped or recreated gave its old
    address to the next container started, often another family's: anything still holding the
    old address (the voice bridge) then reached the wrong family. In turn, an address comes back
    only after every other one of the subnet has been handed out. Where the turn stands is kept
    in `cursor` (the provisioner exits when idle); the host's address is never handed out."""

    def __init__(self, subnet: str, host: str, cursor: Path) -> None:
        network = ipaddress.ip_network(subnet)
        self._first = int(network.network_address) + 1
        self._size = max(network.num_addresses - 2, 1)
        self._host = int(ipaddress.ip_address(host))
        self._cursor = cursor
        self._lock = threading.Lock()

    def take(self, in_use: set[str]) -> str:
        """The next address after the last one handed out that no container holds now."""
        taken = {int(ipaddress.ip_address(a)) for a in in_use} | {self._host}
        with self._lock:
            try:
                last = int(self._cursor.read_text())
            except (OSError, ValueError):
                last = self._first - 1
            for step in range(1, self._size + 1):
                candidate = self._first + (last - self._first + step) % self._size
                if candidate not in taken:
                    tmp = self._cursor.with_name(self._cursor.name + ".tmp")
                    tmp.write_text(str(candidate))
                    os.replace(tmp, self._cursor)
                    return str(ipaddress.ip_address(candidate))
        raise RuntimeError(f"every address of the runtime network ({self._size}) is in use")


def owner_from(name: str, labels: dict[str, str]) -> uuid.UUID | None:
    """The owner label, or for unlabelled containers the uuid in the name."""
    for candidate in (labels.get(LABEL_OWNER, ""), name.removeprefix(RUNTIME_PREFIX)):
        try:
            return uuid.UUID(candidate)
        except ValueError:
            continue
    return None


class DockerBackend:
    def __init__(
        self, settings: RuntimeSettings, state_dir: Path, client: docker.DockerClient | None = None
    ) -> None:
        self.settings = settings
        try:
            self._client = client or docker.from_env(timeout=120)
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"cannot reach the Docker engine: {exc}") from exc
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="docker")
        self._addresses = Addresses(
            settings.subnet, settings.host_address, state_dir / f"{settings.network}.last-address"
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except requests.exceptions.ConnectionError as exc:  # the SDK's transport, not a Docker answer
            raise EngineUnavailable(f"cannot reach the Docker engine: {exc}") from exc
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(str(exc.explanation or exc)) from exc
        except docker.errors.NotFound as exc:
            raise DockerMissing(exc) from exc
        except docker.errors.APIError as exc:
            raise DockerRefused(exc) from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # Host setup

    async def prepare(self) -> None:
        """Create the runtime network if missing: a bridge named `runtime.bridge`, with
        inter-container traffic off."""
        await self._run(self._prepare)

    def _prepare(self) -> None:
        name, bridge = self.settings.network, self.settings.bridge
        try:
            info = self._client.api.inspect_network(name)
        except docker.errors.NotFound:
            info = None
        if info is not None:
            if (info.get("Options") or {}).get(BRIDGE_NAME) == bridge:
                return
            self._make_again(name, bridge)
        subnet = ipaddress.ip_network(self.settings.subnet)
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=self.settings.host_address)]
        )
        try:
            self._client.networks.create(
                name,
                driver="bridge",
                internal=not self.settings.egress,
                ipam=ipam,
                options={BRIDGE_NAME: bridge, "com.docker.network.bridge.enable_icc": "false"},
                labels={"sudo.role": "runtime-network"},
            )
            log.info("created runtime network", extra=fields(network=name, bridge=bridge, subnet=subnet))
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # created concurrently: fine
                raise

    def _make_again(self, name: str, bridge: str) -> None:
        """Remove a runtime network whose bridge has another name (one made before the name was
        fixed): the host's firewall knows the bridge by its name alone. Its runtimes go with it;
        each starts again at its family's next request, on the same data."""
        runtimes = self._client.containers.list(all=True, filters={"label": f"{LABEL_SCOPE}={name}"})
        for container in runtimes:
            container.remove(force=True)
        self._client.api.remove_network(name)
        log.warning(
            f"removed the runtime network {name} and its {len(runtimes)} runtime(s) to make it again "
            f"with the bridge {bridge}",
            extra=fields(network=name, bridge=bridge, removed=len(runtimes)),
        )

    async def image(self, ref: str) -> Image:
        info = await self._run(self._client.api.inspect_image, ref)
        entrypoint = info.get("Config", {}).get("Entrypoint") or ()
        return Image(ref=ref, id=info["Id"], entrypoint=tuple(entrypoint))

    async def tag(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        await self._run(self._client.api.tag, image_id, repository, tag, force=True)

    # Runtimes

    async def get(self, name: str) -> Runtime | None:
        try:
            info = await self._run(self._client.api.inspect_container, name)
        except DockerMissing:
            return None
        state = info["State"]
        return Runtime(
            name=info["Name"].lstrip("/"),
            owner=owner_from(info["Name"].lstrip("/"), info["Config"].get("Labels") or {}),
            state=state["Status"],
            address=self._address(info["NetworkSettings"]),
            image=(info["Config"].get("Labels") or {}).get(LABEL_IMAGE, info["Config"]["Image"]),
            config_hash=(info["Config"].get("Labels") or {}).get(LABEL_HASH, ""),
            container_id=info["Id"],
            oom_killed=bool(state.get("OOMKilled")),
            exit_code=state.get("ExitCode"),
        )

    async def list(self) -> list[Runtime]:
        """Every container named like a runtime, running or not, unless another installation's."""
        rows = await self._run(self._client.api.containers, all=True, filters={"name": RUNTIME_PREFIX})
        runtimes = []
        for row in rows:
            name = row["Names"][0].lstrip("/")
            if not name.startswith(RUNTIME_PREFIX):  # the filter matches substrings
                continue
            labels = row.get("Labels") or {}
            if labels.get(LABEL_SCOPE, self.settings.network) != self.settings.network:
                continue
            runtimes.append(
                Runtime(
                    name=name,
                    owner=owner_from(name, labels),
                    state=row["State"],
                    address=self._address(row.get("NetworkSettings") or {}),
                    image=labels.get(LABEL_IMAGE, row.get("Image", "")),
                    config_hash=labels.get(LABEL_HASH, ""),
                    container_id=row["Id"],
                )
            )
        return runtimes

    async def create(self, spec: RuntimeSpec) -> Runtime:
        """Create the data volume (kept across recreations) and the container, and start it."""
        await self._run(self._create, spec)
        runtime = await self.get(spec.name)
        if runtime is None:
            raise RuntimeError(f"{spec.name} vanished right after it was started")
        return runtime

    def _create(self, spec: RuntimeSpec) -> None:
        owner = spec.create_args["labels"][LABEL_OWNER]
        self._client.volumes.create(spec.volume, labels={LABEL_OWNER: owner})
        network = spec.create_args["network"]
        attached = self._client.api.inspect_network(network).get("Containers") or {}
        address = self._addresses.take({c["IPv4Address"].split("/")[0] for c in attached.values()})
        endpoint = self._client.api.create_endpoint_config(ipv4_address=address)
        try:
            container = self._client.containers.create(
                **spec.create_args, networking_config={network: endpoint}
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameConflict(spec.name) from exc
            raise
        container.start()

    async def remove(self, name: str, *, graceful: bool = True) -> None:
        """Stop (SIGTERM, then SIGKILL after 10 s) and remove a container; gone already is fine."""
        try:
            if graceful:
                await self._run(self._client.api.stop, name, timeout=10)
            await self._run(self._client.api.remove_container, name, force=True)
        except DockerMissing:
            pass
        except DockerRefused as exc:
            if exc.status != 409 or "already in progress" not in exc.explanation:
                raise

    async def remove_volume(self, volume: str) -> bool:
        try:
            await self._run(self._client.api.remove_volume, volume)
            return True
        except DockerMissing:
            return False

    async def pause(self, name: str) -> None:
        await self._run(self._client.api.pause, name)

    async def unpause(self, name: str) -> None:
        await self._run(self._client.api.unpause, name)

    # Data volumes, copied through a helper container that is created but never started: Docker
    # mounts its volumes for get_archive and put_archive. It is made from the runtime image and
    # mounts the volume where the runtime does, so a fresh volume gets the same initial content
    # and owner; its name does not look like a runtime's, so list() and reconcile never see it.

    async def export_volume(
        self, family: uuid.UUID, image_id: str, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Pass a tar of the family's volume contents to `write`, chunk by chunk (missing: created)."""
        helper = await self._run(self._volume_helper, family, image_id, fresh=False)
        try:
            chunks, _ = await self._run(helper.get_archive, f"{DATA_DIR}/.")
            while (chunk := await self._run(next, chunks, None)) is not None:
                await write(chunk)
        finally:
            await self._run(helper.remove, force=True)

    async def import_volume(self, family: uuid.UUID, image_id: str, archive: IO[bytes]) -> None:
        """Replace the family's volume by a fresh one holding the tar's contents, owners kept.

        The container using the volume must be gone already.
        """
        helper = await self._run(self._volume_helper, family, image_id, fresh=True)
        try:
            await self._run(helper.put_archive, DATA_DIR, archive)
        finally:
            await self._run(helper.remove, force=True)

    def _volume_helper(self, family: uuid.UUID, image_id: str, fresh: bool) -> Any:
        name = f"sudo-volume-{family.hex}"
        with contextlib.suppress(docker.errors.NotFound):  # left over by a crash
            self._client.api.remove_container(name, force=True)
        volume = volume_name(family)
        if fresh:
            with contextlib.suppress(docker.errors.NotFound):
                self._client.api.remove_volume(volume)
        self._client.volumes.create(volume, labels={LABEL_OWNER: str(family)})
        return self._client.containers.create(
            image_id,
            name=name,
            volumes={volume: {"bind": DATA_DIR, "mode": "rw"}},
            user=self.settings.user,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode="none",
            labels={"sudo.role": "volume-copy", LABEL_SCOPE: self.settings.network},
        )

    async def volume_sizes(self) -> dict[str, int]:
        """Bytes each volume on the engine holds, by name: Docker's own count, as `docker system
        df -v` shows it (it walks every volume: seconds on a big host, so the reaper asks). The
        engine counts for one caller at a time and refuses the others meanwhile: wait for it,
        as long as a caller of the provisioner waits (another count, on a busy host, took more
        than the minute this once waited)."""
        deadline = time.monotonic() + DF_WAIT_SEC
        while True:
            try:
                usage = await self._run(self._df)
                break
            except DockerRefused as exc:
                if "already running" not in exc.explanation or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
        return {
            v["Name"]: v["UsageData"]["Size"]
            for v in usage.get("Volumes") or []
            if (v.get("UsageData") or {}).get("Size", -1) >= 0
        }

    @staticmethod
    def _df() -> dict:
        """`docker system df` on a client of its own, with a longer wait than every other call:
        the engine counts every image, container and volume (Docker 20.10 cannot count volumes
        alone), which on a busy host took more than the usual two minutes."""
        client = docker.from_env(timeout=DF_TIMEOUT_SEC)
        try:
            return client.df()
        finally:
            client.close()

    async def memory_used(self, name: str) -> int | None:
        """Bytes of memory the container uses now (one sample), counted as `docker stats` does:
        without the inactive page cache, which the kernel drops before it nears the limit."""
        try:
            stats = await self._run(self._client.api.stats, name, stream=False, one_shot=True)
        except DockerMissing:
            return None
        memory = stats.get("memory_stats") or {}
        if (used := memory.get("usage")) is None:
            return None
        detail = memory.get("stats") or {}
        cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))  # cgroup v2, v1
        return used - cache if cache < used else used

    async def logs(self, name: str, tail: int = 30) -> str:
        try:
            raw = await self._run(self._client.api.logs, name, tail=tail)
        except DockerMissing:
            return ""
        return raw.decode(errors="replace").strip()

    # Changes

    async def changes(self) -> AsyncIterator[Change]:
        """Docker's events for this installation's runtimes and for images. The stream is open
        before "resync" is yielded, so nothing that happens while the index is rebuilt is missed;
        when it breaks (the engine restarts), it is opened again, and "resync" comes again."""
        loop = asyncio.get_running_loop()
        pause = 0.5
        while True:
            try:
                stream = await self._run(
                    self._client.events,
                    decode=True,
                    filters={"type": ["container", "image"], "event": [*CONTAINER_CHANGES, *IMAGE_CHANGES]},
                )
            except BackendError as exc:
                log.warning(f"cannot follow Docker's events ({exc}); again in {pause:.1f} s")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            queue: asyncio.Queue[dict | BaseException | None] = asyncio.Queue()
            threading.Thread(
                target=self._pump, args=(stream, loop, queue), name="docker-events", daemon=True
            ).start()
            try:
                yield Change("resync")
                pause = 0.5
                while isinstance(event := await queue.get(), dict):
                    change = self._change(event)
                    if change is not None:
                        yield change
            finally:
                stream.close()  # ends the pump
            log.warning(f"Docker's event stream ended ({event!r}); following it again")

    @staticmethod
    def _pump(stream: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        """Hand each event to the loop; then None at the end, or the error that ended it."""
        last: BaseException | None = None
        try:
            for event in stream:
                loop.call_soon_threadsafe(queue.put_nowait, event)
        except BaseException as exc:  # the stream's socket closed or broke
            last = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, last)

    def _change(self, event: dict) -> Change | None:
        action = event.get("Action", "")
        if event.get("Type") == "image":
            return Change("image") if action in IMAGE_CHANGES else None
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get("name", "")
        if (
            action not in CONTAINER_CHANGES
            or not name.startswith(RUNTIME_PREFIX)
            or attributes.get(LABEL_SCOPE, self.settings.network) != self.settings.network
        ):
            return None
        code = attributes.get("exitCode", "")
        return Change(action, name, event["Actor"]["ID"], int(code) if code.isdigit() else None)

    def _address(self, network_settings: dict) -> str | None:
        network = (network_settings.get("Networks") or {}).get(self.settings.network) or {}
        return network.get("IPAddress") or None
