"""stop, purge, eviction, reconcile, stale configs and restart-all, against real containers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time

import aiohttp
import pytest
from control_plane import chat
from stack import BIN, Stack

from sudo_core import usage
from sudo_core.families import runtime_name, volume_name
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError


def volume_exists(stack: Stack, name: str) -> bool:
    return any(v.name == name for v in stack.docker.volumes.list())


async def shut_down(url: str) -> None:
    """Wait until the runtime at `url` stops answering /health: the signal has been acted on."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http, asyncio.timeout(20):
        while True:
            try:
                async with http.get(f"{url}/health") as resp:
                    if resp.status != 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                return
            await asyncio.sleep(0.05)


async def test_stop_keeps_the_agents_memory_and_purge_removes_it(stack: Stack, provisioner):
    family = stack.new_family("Memory")
    await provisioner.ensure(family.id)
    stack.container(family.id).exec_run(
        ["sh", "-c", "echo 'the cat is called Ada' > /opt/data/memories/USER.md"]
    )

    assert await provisioner.stop(family.id) == {"stopped": True, "purged": False}
    assert stack.container(family.id) is None
    assert volume_exists(stack, volume_name(family.id))

    await provisioner.ensure(family.id)
    _, out = stack.container(family.id).exec_run(["cat", "/opt/data/memories/USER.md"])
    assert out.decode().strip() == "the cat is called Ada"
    _, memory = stack.container(family.id).exec_run(["cat", "/opt/data/memories/MEMORY.md"])
    assert "Memory family" in memory.decode()

    assert await provisioner.stop(family.id, purge=True) == {"stopped": True, "purged": True}
    assert not volume_exists(stack, volume_name(family.id))
    assert await provisioner.stop(family.id) == {"stopped": False, "purged": False}


async def test_stale_config_is_recreated_not_restarted(stack: Stack, provisioner):
    family = stack.new_family("Stale")
    await provisioner.ensure(family.id)
    old = stack.container(family.id)

    stack.db.set_setting("llm.model", "a-new-model")  # goes into config.yaml: a new hash
    try:
        assert (await provisioner.get(family.id)).stale is True
        await provisioner.ensure(family.id)
        new = stack.container(family.id)
        assert new.id != old.id, "a stale runtime must be recreated, not reused"
        assert new.labels["sudo.config-hash"] != old.labels["sudo.config-hash"]
        _, config = new.exec_run(["cat", "/opt/data/config.yaml"])
        assert '"a-new-model"' in config.decode()
    finally:
        stack.db.set_setting("llm.model", "family-model")


async def test_exited_runtime_is_replaced_on_ensure(stack: Stack, provisioner):
    family = stack.new_family("Crashed")
    await provisioner.ensure(family.id)
    old = stack.container(family.id)
    old.kill()
    runtime = await provisioner.ensure(family.id)
    assert stack.container(family.id).id != old.id
    assert stack.container(family.id).status == "running"
    assert runtime.state == "running"


async def test_evict_idle_spares_recent_and_in_flight_runtimes(stack: Stack, provisioner):
    idle, recent, busy = (stack.new_family(n) for n in ("Idle", "Recent", "Busy"))
    await asyncio.gather(*(provisioner.ensure(f.id) for f in (idle, recent, busy)))
    long_ago = time.time() - 3600
    for family in (idle, busy):
        stack.set_last_active(family.id, long_ago)
    lease = stack.db.acquire_lease(busy.id, "test", ttl=60)

    result = await provisioner.evict_idle(idle_sec=600)
    assert str(idle.id) in result["evicted"]
    assert str(recent.id) not in result["evicted"]
    assert str(busy.id) not in result["evicted"], "a runtime with a request in flight was reaped"
    assert stack.container(idle.id) is None
    assert stack.container(busy.id).status == "running"
    assert stack.container(recent.id).status == "running"

    stack.db.release_lease(lease)
    result = await provisioner.evict_idle(idle_sec=600)
    assert str(busy.id) in result["evicted"]


async def test_llm_request_in_flight_holds_off_the_reaper(stack: Stack, provisioner, http):
    family = stack.new_family("Thinking")
    runtime = await provisioner.ensure(family.id)
    stack.set_last_active(family.id, 0)
    talking = asyncio.create_task(chat(http, runtime.url, stack.api_key(family.id), "think hard [slow:6]"))
    # wait until the gateway holds the request (and so a lease) for this family
    for _ in range(200):
        if stack.db.has_active_lease(family.id):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the gateway never took a lease for the request")
    result = await provisioner.evict_idle(idle_sec=0)
    assert str(family.id) not in result["evicted"]
    assert "stub says: think hard" in await talking


async def test_reconcile_removes_orphans_and_legacy_and_adopts_the_rest(stack: Stack, provisioner):
    keep, gone = stack.new_family("Keep"), stack.new_family("Gone")
    await asyncio.gather(provisioner.ensure(keep.id), provisioner.ensure(gone.id))
    kept_id = stack.container(keep.id).id
    legacy = stack.docker.containers.create(
        stack.settings.runtime.image, name="hermes-user-usr_legacy123", entrypoint=["true"]
    )
    stack.db.delete_family(gone.id)
    try:
        result = await provisioner.reconcile()
        removed = {r["name"]: r["reason"] for r in result["removed"]}
        assert removed[runtime_name(gone.id)] == "family no longer exists"
        assert removed["hermes-user-usr_legacy123"] == "legacy"
        assert runtime_name(keep.id) not in removed
        assert stack.container(gone.id) is None
        assert stack.container(keep.id).id == kept_id
        assert volume_exists(stack, volume_name(gone.id)), "reconcile must never delete data"
    finally:
        if stack.docker.containers.list(all=True, filters={"name": "hermes-user-usr_legacy123"}):
            legacy.remove(force=True)


async def test_restarted_provisioner_adopts_its_runtimes(stack: Stack, provisioner):
    family = stack.new_family("Adopted")
    await provisioner.ensure(family.id)
    container_id = stack.container(family.id).id
    stack.stop("provisioner", sig=9)
    stack.start_provisioner()
    runtime = await provisioner.ensure(family.id)
    assert stack.container(family.id).id == container_id
    assert runtime.state == "running"


async def test_a_runtime_on_its_way_out_when_the_provisioner_restarts_is_replaced(stack: Stack, provisioner):
    """A provisioner killed while it stopped a runtime (restart-all, eviction) leaves it running
    for the seconds Hermes takes to shut down; the next provisioner's ensure sees it die during
    its first health check and spawns a fresh one, rather than failing the family's message."""
    family = stack.new_family("Leaving")
    first = await provisioner.ensure(family.id)
    old = stack.container(family.id)
    stack.stop("provisioner", sig=9)
    stack.start_provisioner()  # a new process: it has not checked this runtime yet
    old.kill(signal="SIGTERM")  # the stop the dead provisioner had begun, still under way
    await shut_down(first.url)  # Hermes no longer serves, though it may not have exited
    runtime = await provisioner.ensure(family.id)
    new = stack.container(family.id)
    assert new.id != old.id and new.status == "running" and runtime.state == "running"


async def test_provisioner_killed_mid_spawn_leaves_one_runtime(stack: Stack, provisioner):
    family = stack.new_family("Interrupted")
    pending = asyncio.create_task(provisioner.ensure(family.id))
    for _ in range(300):  # until docker has the container
        if stack.container(family.id) is not None:
            break
        await asyncio.sleep(0.02)
    stack.stop("provisioner", sig=9)
    with contextlib.suppress(Exception):  # the caller saw the provisioner die
        await pending
    stack.start_provisioner()
    await asyncio.gather(*(provisioner.ensure(family.id) for _ in range(5)))
    owned = [c for c in stack.containers() if c.labels["sudo.owner"] == str(family.id)]
    assert len(owned) == 1
    assert owned[0].status == "running"


async def test_restart_all_recreates_every_runtime_and_reports_failures(stack: Stack, provisioner):
    families = [stack.new_family(f"Fleet {i}") for i in range(3)]
    await asyncio.gather(*(provisioner.ensure(f.id) for f in families))
    running = {c.labels["sudo.owner"]: c.id for c in stack.containers() if c.status == "running"}
    doomed = families[0]
    stack.db.delete_family(doomed.id)  # its recreation fails; the others must carry on

    events = [e async for e in provisioner.restart_all()]
    assert events[0]["event"] == "start" and events[0]["total"] == len(running)
    assert 1 <= events[0]["concurrency"] <= (os.cpu_count() or 1)  # follows the host's cores
    done = events[-1]
    assert done["event"] == "done"
    assert done["total"] == len(running)
    assert [f["family"] for f in done["failed"]] == [str(doomed.id)]
    assert done["restarted"] == len(running) - 1
    progress = [e for e in events[1:-1]]
    assert sorted(e["done"] for e in progress) == list(range(1, len(running) + 1))
    for family in families[1:]:
        assert stack.container(family.id).id != running[str(family.id)], "not recreated"
        assert stack.container(family.id).status == "running"


async def test_reaper_evicts_idle_runtimes_through_the_provisioner(stack: Stack, provisioner):
    family = stack.new_family("Reaped")
    await provisioner.ensure(family.id)
    stack.set_last_active(family.id, 0)
    result = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "sudo-reaper"), "--idle-sec", "60"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "evicted" in result.stderr
    assert stack.container(family.id) is None


async def test_past_max_running_the_least_recently_active_gives_its_place(tmp_path):
    """runtime.max_running = 2: a warm-up takes no place; a family someone waits on takes the
    place of the least recently active runtime (its data kept), never one in use; with every
    runtime in use, a third is refused with a 503 until a place frees."""
    own = Stack(tmp_path / "stack", runtime={"max_running": 2})
    try:
        own.start_provisioner()
        old, recent, new = (own.new_family(n) for n in ("Old", "Recent", "New"))
        async with ProvisionerClient(own.socket) as provisioner:
            await asyncio.gather(provisioner.ensure(old.id), provisioner.ensure(recent.id))
            own.container(old.id).exec_run(["sh", "-c", "echo 'the dog is Rex' > /opt/data/memories/USER.md"])
            own.set_last_active(old.id, time.time() - 3600)

            with pytest.raises(ProvisionerError) as refused:
                await provisioner.ensure(new.id, warm_up=True)
            assert refused.value.status == 503 and "warm-up waits" in str(refused.value)
            assert own.container(new.id) is None

            await provisioner.ensure(new.id)
            assert own.container(old.id) is None, "the least recently active gave its place"
            assert own.container(recent.id).status == "running"

            leases = [own.db.acquire_lease(f.id, "test", ttl=60) for f in (recent, new)]
            with pytest.raises(ProvisionerError) as full:
                await provisioner.ensure(old.id)
            assert full.value.status == 503 and "in use" in str(full.value)
            assert own.container(recent.id).status == own.container(new.id).status == "running"

            own.db.release_lease(leases[0])
            await provisioner.ensure(old.id)  # the family comes back with what it had
            _, memory = own.container(old.id).exec_run(["cat", "/opt/data/memories/USER.md"])
            assert memory.decode().strip() == "the dog is Rex"
            assert own.container(recent.id) is None and own.container(new.id).status == "running"
            running = own.docker.containers.list(filters={"label": f"sudo.scope={own.network}"})
            assert len(running) == 2
    finally:
        own.close()


async def test_the_reaper_measures_each_familys_volume_against_the_quota(tmp_path):
    """Docker's own count of each volume, recorded with the quota it is held to; the reaper says
    which families are past it, and their data is left as it was."""
    own = Stack(tmp_path / "stack", runtime={"volume_quota": "2m"})
    try:
        own.start_provisioner()
        big, small = own.new_family("Big"), own.new_family("Small")
        async with ProvisionerClient(own.socket) as provisioner:
            await asyncio.gather(provisioner.ensure(big.id), provisioner.ensure(small.id))
            own.container(big.id).exec_run(["sh", "-c", "head -c 3000000 /dev/urandom > /opt/data/photo.bin"])
            own.container(small.id).exec_run(["sh", "-c", "rm -f /opt/data/photo.bin"])
            reaped = await asyncio.to_thread(
                subprocess.run,
                [str(BIN / "sudo-reaper"), "--idle-sec", "3600"],
                env=own.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert reaped.returncode == 0, reaped.stderr
        sizes = usage.volumes(own.db)
        assert sizes[big.id].bytes >= 3_000_000 and sizes[big.id].quota == 2 * 2**20
        assert sizes[big.id].over_quota and "past runtime.volume_quota" in reaped.stderr
        assert str(big.id) in reaped.stderr and str(small.id) not in reaped.stderr
        assert sizes[small.id].bytes < sizes[big.id].bytes - 2_900_000
        _, listed = own.container(big.id).exec_run(["stat", "-c", "%s", "/opt/data/photo.bin"])
        assert listed.decode().strip() == "3000000"
    finally:
        own.close()
