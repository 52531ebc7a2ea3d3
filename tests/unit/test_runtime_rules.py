"""The lifecycle rules of the provisioner's RuntimeManager, on the in-memory backend.

Shared ensures and the family lock, eviction against leases, revival, the index kept by the
engine's changes, and who gets a spawn slot first. The same rules against the real engine and
Hermes are in tests/integration (test_ensure, test_lifecycle); here each takes a moment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from fake_backend import FakeBackend
from provisioner_socket import serving

from sudo_core.config import ProvisionerSettings, RuntimeSettings, Settings
from sudo_core.db import Database
from sudo_core.families import runtime_name
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError
from sudo_core.systemd import Notifier
from sudo_provisioner.admission import Claim, Priority, Slots
from sudo_provisioner.images import ImageUpgrades
from sudo_provisioner.runtimes import AtCapacity, Busy, RuntimeManager
from sudo_provisioner.server import Activity, build_app


@pytest.fixture(scope="module")
async def health_port() -> AsyncIterator[int]:
    """Hermes's /health, as every running fake container answers it (all at 127.0.0.1)."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


class Rig:
    def __init__(self, manager: RuntimeManager, backend: FakeBackend, db: Database) -> None:
        self.manager, self.backend, self.db = manager, backend, db

    async def family(self, name: str) -> uuid.UUID:
        return (await self.db.aio(self.db.create_family, name)).id

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait for the manager to reach a state (its database calls run on a thread)."""
        for _ in range(2500):
            if predicate():
                return
            await asyncio.sleep(0.002)
        raise AssertionError("the manager did not get there in 5 s")

    def queued(self) -> int:
        return self.manager._slots.waiting()

    async def age(self, family: uuid.UUID) -> None:
        sql = "UPDATE families SET last_active_at = 0 WHERE id = ?"
        await self.db.aio(self.db.execute, sql, (str(family),))


@pytest.fixture
async def rig_with(tmp_path, health_port):
    """A manager on a fake backend, with the settings the test asks for."""
    made: list[tuple[RuntimeManager, Database]] = []

    async def make(max_running: int = 32, spawns: int = 4, memory: str = "1k", grace: float = 30.0) -> Rig:
        runtime = RuntimeSettings(
            image="sudo-hermes:test", api_port=health_port, max_running=max_running, memory=memory
        )
        provisioner = ProvisionerSettings(
            max_concurrent_spawns=spawns, health_timeout_sec=5, restart_grace_sec=grace
        )
        settings = dataclasses.replace(Settings(), runtime=runtime, provisioner=provisioner)
        db = Database(tmp_path / f"sudo-{len(made)}.db")
        backend = FakeBackend()
        manager = RuntimeManager(settings, db, backend, b"s" * 32)
        await manager.start()
        made.append((manager, db))
        return Rig(manager, backend, db)

    yield make
    for manager, db in made:
        await manager.close()
        db.close()


async def test_a_warm_ensure_asks_the_engine_nothing(rig_with):
    rig = await rig_with()
    family = await rig.family("Warm")
    first = await rig.manager.ensure(family)
    rig.backend.calls = 0
    for _ in range(20):
        assert (await rig.manager.ensure(family)).container_id == first.container_id
    assert rig.backend.calls == 0


async def test_the_client_reads_each_runtime_as_the_api_describes_it(rig_with, tmp_path):
    """The provisioner's API and its client agree: ensure, get and list answer a RuntimeView,
    its family's id named `family` on the wire as in the code."""
    rig = await rig_with()
    family, gone = await rig.family("Described"), await rig.family("Gone")
    app = build_app(rig.manager, ImageUpgrades(rig.manager, tmp_path), Activity(), Notifier())
    async with serving(app, tmp_path / "p.sock"), ProvisionerClient(tmp_path / "p.sock") as client:
        ensured = await client.ensure(family)
        await client.ensure(gone)
        await rig.db.aio(rig.db.delete_family, gone)
        described = await client.get(family)
        listed = {r.family: r for r in await client.list(stats=True)}
        orphan = await client.get(gone)
    assert (ensured.family, ensured.name, ensured.running) == (family, runtime_name(family), True)
    port = rig.manager.settings.runtime.api_port
    assert ensured.url == f"http://127.0.0.1:{port}" and ensured.chat_url and ensured.whatsapp_url
    assert described.stale is False and described.last_active_at is not None
    assert dataclasses.replace(described, stale=None, last_active_at=None) == ensured
    assert listed[family].memory_bytes == 100 << 20 and listed[family].stale is None
    assert (orphan.family, orphan.last_active_at, orphan.stale) == (gone, None, None)


async def test_an_answer_of_another_shape_is_a_provisioner_error(tmp_path):
    """A provisioner of another version (its runtimes keyed `user_id`) is an error every caller
    handles, not a KeyError that would end sudo-api's watcher."""

    async def old_list(_request: web.Request) -> web.Response:
        old = {"user_id": str(uuid.uuid4()), "name": "hermes-user-x", "state": "running"}
        return web.json_response({"runtimes": [old]})

    app = web.Application()
    app.router.add_get("/v1/runtimes", old_list)
    async with serving(app, tmp_path / "old.sock"), ProvisionerClient(tmp_path / "old.sock") as client:
        with pytest.raises(ProvisionerError) as raised:
            await client.list()
    assert raised.value.status == 502 and "unexpected runtime" in raised.value.body["error"]


async def test_concurrent_ensures_share_one_spawn(rig_with):
    rig = await rig_with()
    family = await rig.family("Shared")
    rig.backend.gate.clear()
    waiting = [asyncio.create_task(rig.manager.ensure(family)) for _ in range(5)]
    warm_up = asyncio.create_task(rig.manager.ensure(family, Priority.WARM_UP))
    await rig.until(lambda: rig.backend.created == [runtime_name(family)])
    rig.backend.gate.set()
    runtimes = await asyncio.gather(*waiting, warm_up)
    assert rig.backend.created == [runtime_name(family)]
    assert len({r.container_id for r in runtimes}) == 1


async def test_a_stop_waits_for_the_ensure_under_way(rig_with):
    """The family lock: a stop that comes during a spawn removes what the spawn made."""
    rig = await rig_with()
    family = await rig.family("Locked")
    rig.backend.gate.clear()
    ensure = asyncio.create_task(rig.manager.ensure(family))
    await rig.until(lambda: rig.backend.created == [runtime_name(family)])
    stop = asyncio.create_task(rig.manager.stop(family))
    await asyncio.sleep(0.05)
    assert not stop.done()
    rig.backend.gate.set()
    await ensure
    assert await stop == {"stopped": True, "purged": False}
    assert rig.backend.containers == {}
    await rig.until(lambda: rig.manager.index.get(runtime_name(family)) is None)


async def test_a_death_the_engine_reports_is_spawned_again(rig_with):
    rig = await rig_with()
    family = await rig.family("Fragile")
    first = await rig.manager.ensure(family)
    rig.backend.kill(first.name, oom=True)
    await rig.until(lambda: not rig.manager.index.get(first.name).running)
    assert rig.manager.index.get(first.name).oom_killed
    second = await rig.manager.ensure(family)
    assert second.container_id != first.container_id and second.running
    assert rig.backend.created == [first.name, first.name]


async def test_revive_after_a_stop_does_nothing_after_a_death_spawns(rig_with):
    rig = await rig_with()
    family = await rig.family("Revived")
    await rig.manager.ensure(family)
    await rig.manager.stop(family)
    assert await rig.manager.revive(family) == {"revived": False}
    assert rig.backend.containers == {}
    first = await rig.manager.ensure(family)
    rig.backend.kill(first.name)
    assert await rig.manager.revive(family) == {"revived": True}
    assert rig.backend.containers[first.name].running
    assert rig.backend.containers[first.name].container_id != first.container_id


async def test_idle_eviction_spares_a_family_with_a_request_in_flight(rig_with):
    rig = await rig_with()
    busy, idle = await rig.family("Busy"), await rig.family("Idle")
    for family in (busy, idle):
        await rig.manager.ensure(family)
        await rig.age(family)
    await rig.db.aio(rig.db.acquire_lease, busy, "chat", 60)
    summary = await rig.manager.evict_idle(idle_sec=60)
    assert summary["evicted"] == [str(idle)] and summary["kept"] == 1
    assert list(rig.backend.containers) == [runtime_name(busy)]


async def test_a_volume_is_copied_with_the_runtime_paused_then_running_again(rig_with):
    """The backup's copy freezes the runtime rather than stopping it: the same container runs on
    after, and is unpaused even when the copy fails midway."""
    rig = await rig_with()
    family = await rig.family("Paused")
    runtime = await rig.manager.ensure(family)
    seen: list[str] = []
    told: list[bool] = []

    async def write(chunk: bytes) -> None:
        container = rig.backend.containers.get(runtime.name)
        seen.append(container.state if container else "none")

    async def paused(running: bool) -> None:
        told.append(running)

    seconds = await rig.manager.export_volume(family, write, paused)
    assert seen == ["paused"] and told == [True] and seconds > 0
    after = rig.backend.containers[runtime.name]
    assert after.state == "running" and after.container_id == runtime.container_id

    async def broken(chunk: bytes) -> None:
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await rig.manager.export_volume(family, broken)
    assert rig.backend.containers[runtime.name].state == "running"

    await rig.manager.stop(family)
    assert await rig.manager.export_volume(family, write, paused) == 0.0
    assert told == [True, False] and seen[-1] == "none"


async def test_a_volume_copy_waits_for_a_request_in_flight_then_refuses(rig_with):
    rig = await rig_with(grace=0.3)
    family = await rig.family("Busy")
    runtime = await rig.manager.ensure(family)
    lease = await rig.db.aio(rig.db.acquire_lease, family, "gateway", 60)
    copied: list[bytes] = []

    async def write(chunk: bytes) -> None:
        copied.append(chunk)

    with pytest.raises(Busy, match="request in flight"):
        await rig.manager.export_volume(family, write)
    assert copied == [] and rig.backend.containers[runtime.name].state == "running"
    await rig.db.aio(rig.db.release_lease, lease)
    await rig.manager.export_volume(family, write)
    assert len(copied) == 1


async def test_room_is_made_from_a_runtime_without_a_lease_and_never_by_a_warm_up(rig_with):
    rig = await rig_with(max_running=1)
    first, second = await rig.family("First"), await rig.family("Second")
    await rig.manager.ensure(first)
    lease = await rig.db.aio(rig.db.acquire_lease, first, "chat", 60)
    with pytest.raises(AtCapacity):
        await rig.manager.ensure(second)  # the only runtime is in use
    await rig.db.aio(rig.db.execute, "DELETE FROM leases WHERE id = ?", (lease,))
    with pytest.raises(AtCapacity, match="warm-up"):
        await rig.manager.ensure(second, Priority.WARM_UP)  # nobody waits: it takes no place
    await rig.manager.ensure(second)
    assert list(rig.backend.containers) == [runtime_name(second)]


async def test_someone_waiting_goes_before_queued_warm_ups(rig_with):
    rig = await rig_with(spawns=1)
    warm = [await rig.family(f"Warm {i}") for i in range(4)]
    chatting = await rig.family("Chatting")
    rig.backend.gate.clear()
    tasks = [asyncio.create_task(rig.manager.ensure(f, Priority.WARM_UP)) for f in warm]
    await rig.until(lambda: len(rig.backend.created) == 1 and rig.queued() == 3)  # one holds the slot
    tasks.append(asyncio.create_task(rig.manager.ensure(chatting)))
    await rig.until(lambda: rig.queued() == 4)
    rig.backend.gate.set()
    await asyncio.gather(*tasks)
    order = [runtime_name(f) for f in [warm[0], chatting, *warm[1:]]]
    assert rig.backend.created == order


async def test_no_warm_up_starts_while_someone_waits_on_a_spawn(rig_with):
    """Free slots or not: Hermes's start is CPU-bound, and the waiting family's gets the cores."""
    rig = await rig_with(spawns=4)
    chatting, warm = await rig.family("Chatting"), await rig.family("Warm")
    rig.backend.gate.clear()
    waited = asyncio.create_task(rig.manager.ensure(chatting))
    await rig.until(lambda: rig.backend.created == [runtime_name(chatting)])
    warm_up = asyncio.create_task(rig.manager.ensure(warm, Priority.WARM_UP))
    await rig.until(lambda: rig.queued() == 1)
    await asyncio.sleep(0.05)
    assert rig.backend.created == [runtime_name(chatting)]  # three slots free, and it waits
    rig.backend.gate.set()
    await asyncio.gather(waited, warm_up)
    assert rig.backend.created == [runtime_name(chatting), runtime_name(warm)]


async def test_a_queued_warm_up_someone_comes_to_wait_on_is_raised(rig_with):
    rig = await rig_with(spawns=1)
    first, second, joined = [await rig.family(n) for n in ("First", "Second", "Joined")]
    rig.backend.gate.clear()
    tasks = [asyncio.create_task(rig.manager.ensure(f, Priority.WARM_UP)) for f in (first, second, joined)]
    await rig.until(lambda: rig.backend.created == [runtime_name(first)] and rig.queued() == 2)
    tasks.append(asyncio.create_task(rig.manager.ensure(joined)))  # a message for a queued warm-up
    await asyncio.sleep(0)
    rig.backend.gate.set()
    await asyncio.gather(*tasks)
    assert rig.backend.created == [runtime_name(f) for f in (first, joined, second)]


async def test_a_queued_revival_someone_comes_to_wait_on_is_raised(rig_with):
    """Its ensure waits on the family's lock, which the revival holds: the revival's claim rises."""
    rig = await rig_with(spawns=1)
    warm, first, joined = [await rig.family(n) for n in ("Warm", "First", "Joined")]
    for family in (first, joined):
        rig.backend.kill((await rig.manager.ensure(family)).name)
    rig.backend.created.clear()
    rig.backend.gate.clear()
    tasks = [asyncio.create_task(rig.manager.ensure(warm, Priority.WARM_UP))]
    await rig.until(lambda: rig.backend.created == [runtime_name(warm)])
    tasks += [asyncio.create_task(rig.manager.revive(f)) for f in (first, joined)]
    await rig.until(lambda: rig.queued() == 2)
    tasks.append(asyncio.create_task(rig.manager.ensure(joined)))  # a message for it
    await asyncio.sleep(0.05)
    rig.backend.gate.set()
    await asyncio.gather(*tasks)
    assert rig.backend.created == [runtime_name(f) for f in (warm, joined, first)]


async def test_a_warm_up_waits_for_memory_the_host_lacks(rig_with):
    rig = await rig_with(memory="100000g")
    family = await rig.family("Big")
    with pytest.raises(AtCapacity, match=r"MiB available, less than runtime\.memory"):
        await rig.manager.ensure(family, Priority.WARM_UP)
    assert rig.backend.created == []
    await rig.manager.ensure(family)  # someone waits: it starts regardless
    assert rig.backend.created == [runtime_name(family)]


async def test_a_slot_handed_to_a_cancelled_waiter_goes_to_the_next():
    slots = Slots(1)
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        async with slots.hold(Claim(priority)):
            order.append(name)
            await asyncio.sleep(0)

    async with slots.hold(Claim(Priority.WAITING)):
        cancelled = asyncio.create_task(take("cancelled", Priority.WAITING))
        later = asyncio.create_task(take("later", Priority.WARM_UP))
        await asyncio.sleep(0)
        cancelled.cancel()
    await asyncio.gather(later, return_exceptions=True)
    assert order == ["later"] and slots.waiting() == 0
