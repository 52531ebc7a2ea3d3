"""Faults at the worst moments, each under traffic: sudo-api, the provisioner, the reaper and a
family's container killed with SIGKILL; the Docker engine going away and coming back; sudo-api
killed again and again in the middle of its database writes.

Every test talks to the same few families on the web chat and on WhatsApp while the fault
strikes, with replies in flight (`[slow:N]` holds the LLM stand-in's answer), then checks what
ledger.py counts: each message sudo-api acknowledged answered exactly once, no container
orphaned or duplicated, every family's agent memory intact, and a family served again: the
seconds that took are the test's `recovery_sec`. Only the LLM provider and Twilio are
stand-ins; Twilio's retries (a webhook not answered 200 is sent again) are played by the
ledger. The engine's restart is played by killing a relay of its socket (docker_proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from control_plane import Family, admin_session, sign_up
from figures import Tally
from ledger import (
    ChatLedger,
    WhatsAppLedger,
    answered,
    asked,
    container_problems,
    device_of,
    link_number,
    memories_lost,
    remember,
    tag,
    twilio_ready,
    until,
)
from reliability_support import EngineRelay, size
from stack import BIN, Stack

from sudo_core.provisioner_client import ProvisionerClient

HERE = Path(__file__).resolve().parent


@dataclass
class World:
    """The families the faults strike, and one more that only asks "are you back?"."""

    stack: Stack
    http: aiohttp.ClientSession
    families: list[Family]
    numbers: dict[str, str]
    """family id -> its linked WhatsApp number"""
    memories: dict[uuid.UUID, str]
    """family -> the entry its agent was given to remember"""
    probe: Family

    def ledgers(self) -> tuple[ChatLedger, WhatsAppLedger]:
        return ChatLedger(), WhatsAppLedger(self.stack, self.http)


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    if "api" not in stack.processes:
        stack.start_api()
    await twilio_ready(stack)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        families = [await sign_up(http, stack.api_url, f"Fault{i}") for i in range(size(3, 6))]
        numbers = {f.id: f"+4477009{random.randrange(10**5):05d}" for f in families}
        memories = {}
        for family in families:
            await link_number(stack, family, numbers[family.id])
            await answered(family, tag("hello"))
            memories[uuid.UUID(family.id)] = tag("remember: the spare key is under the blue pot")
            remember(stack, uuid.UUID(family.id), memories[uuid.UUID(family.id)])
        probe = await sign_up(http, stack.api_url, "Probe")
        await answered(probe, tag("hello"))
        yield World(stack, http, families, numbers, memories, probe)
    await stack.db.aio(stack.db.execute, "DELETE FROM settings")


@pytest.fixture(autouse=True)
def running(stack: Stack) -> None:
    """Every test starts, and leaves the next one, with sudo-api and the provisioner running."""
    for name, start in (("provisioner", stack.start_provisioner), ("api", stack.start_api)):
        proc = stack.processes.get(name)
        if proc is None or proc.poll() is not None:
            start()


async def talk(world: World, chat: ChatLedger, whatsapp: WhatsAppLedger, slow: float = 0) -> None:
    """Every family says one thing on the web chat and one on WhatsApp, at once."""
    mark = f" [slow:{slow}]" if slow else ""
    await asyncio.gather(
        *(chat.send(f, tag("chat") + mark) for f in world.families),
        *(whatsapp.send(world.numbers[f.id], tag("whatsapp") + mark) for f in world.families),
    )


@contextlib.asynccontextmanager
async def traffic(world: World, chat: ChatLedger, whatsapp: WhatsAppLedger) -> AsyncIterator[None]:
    """Families keep talking, a reply in flight most of the time, until the block ends: each
    round is two messages a family, paced to use at most 70 % of the family's message rate
    (api.family_messages_per_minute), so neither it nor the next test's first messages are
    refused for the rate: what is measured here is faults, not the limit (tests/unit has it)."""
    round_sec = 60 / (0.7 * world.stack.settings.api.family_messages_per_minute / 2)

    async def keep_talking() -> None:
        while True:
            started = time.monotonic()
            await talk(world, chat, whatsapp, slow=random.choice((1, 3, 5)))
            await asyncio.sleep(round_sec - (time.monotonic() - started) + random.uniform(0, 1))

    task = asyncio.create_task(keep_talking())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def survived(world: World, chat: ChatLedger, whatsapp: WhatsAppLedger, figures: Tally) -> None:
    """The checks after every fault (see the module's docstring), with the figures."""
    figures.notes["recovery_sec"] = round(await answered(world.probe, tag("are you back?")), 2)
    figures.notes["twilio_retries"] = await whatsapp.retry_until_acknowledged()
    chat_outcome, whatsapp_outcome = await chat.settle(), await whatsapp.settle()
    containers = await asyncio.to_thread(container_problems, world.stack)
    forgotten = await asyncio.to_thread(memories_lost, world.stack, world.memories)
    figures.notes |= {
        "chat": chat_outcome.as_json() | {"unacknowledged": chat.unacknowledged},
        "whatsapp": whatsapp_outcome.as_json() | {"attempts": whatsapp.attempts},
        "container_problems": len(containers),
        "memories_lost": len(forgotten),
    }
    figures.tried("message", chat_outcome.sent + whatsapp_outcome.sent)
    problems = chat_outcome.problems + whatsapp_outcome.problems + containers
    assert not problems, problems
    assert chat_outcome.sent and whatsapp_outcome.sent, "the fault struck no traffic"
    assert not forgotten, f"agents forgot their memory: {forgotten}"


def owners(stack: Stack) -> dict[str, str]:
    """family id -> the id of its running container"""
    return {c.labels["sudo.owner"]: c.id for c in stack.containers() if c.status == "running"}


async def test_sudo_api_killed_mid_reply_and_mid_webhook(world: World, figures: Tally):
    chat, whatsapp = world.ledgers()
    kills = size(3, 12)
    async with traffic(world, chat, whatsapp):
        for _ in range(kills):
            await asyncio.sleep(random.uniform(0.5, 4))
            world.stack.stop("api", sig=9)
            await asyncio.sleep(random.uniform(0, 1.5))
            await asyncio.to_thread(world.stack.start_api)
    figures.notes["kills"] = kills
    await survived(world, chat, whatsapp, figures)


async def test_sudo_api_killed_mid_database_write(world: World, figures: Tally):
    """Sign-ups (a family, its account and a session in one transaction), chat messages and
    heartbeats flushed in batches, while sudo-api is killed every second or so."""
    stack, chat, whatsapp = world.stack, *world.ledgers()
    devices = [await device_of(stack, f) for f in world.families]
    signed_up: list[Family] = []

    async def write() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, AssertionError):
                signed_up.append(await sign_up(world.http, stack.api_url, "Written"))
            for token in devices:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    headers = {"Authorization": f"Bearer {token}"}
                    async with world.http.post(f"{stack.api_url}/v1/devices/heartbeat", headers=headers):
                        pass

    kills = size(8, 40)
    writers = [asyncio.create_task(write()) for _ in range(3)]
    async with traffic(world, chat, whatsapp):
        for _ in range(kills):
            await asyncio.sleep(random.uniform(0.2, 1.5))
            world.stack.stop("api", sig=9)
            await asyncio.to_thread(world.stack.start_api)
    for task in writers:
        task.cancel()
    await asyncio.gather(*writers, return_exceptions=True)

    with contextlib.closing(sqlite3.connect(stack.settings.core.database_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        half_made = db.execute(
            "SELECT id FROM families WHERE name = 'Written' AND id NOT IN (SELECT family_id FROM accounts)"
        ).fetchall()
    assert not half_made, f"families written without their account: {half_made}"
    for family in signed_up:  # every sign-up sudo-api answered 201 for was kept whole
        status, body = await family.call("GET", "/v1/me")
        assert status == 200, body
    figures.notes |= {"kills": kills, "signups_acknowledged": len(signed_up)}
    assert signed_up, "no sign-up got through: the test wrote nothing"
    await survived(world, chat, whatsapp, figures)


async def test_provisioner_killed_mid_spawn(world: World, provisioner: ProvisionerClient, figures: Tally):
    """Runtimes asleep, messages arrive and wake them: the provisioner dies while Docker holds
    the new containers but before they are healthy, and comes back (systemd would start it on
    sudo-api's next connection; here the test starts it)."""
    stack, chat, whatsapp = world.stack, *world.ledgers()
    for family in world.families:
        await provisioner.stop(uuid.UUID(family.id))
    await talk(world, chat, whatsapp)
    await until(lambda: all(stack.container(uuid.UUID(f.id)) for f in world.families), 60, "the spawns")
    stack.stop("provisioner", sig=9)
    figures.notes["asked_before_the_kill"] = sum(asked(stack, s.text) for s in chat.sent)
    await asyncio.sleep(random.uniform(0.5, 2))
    await asyncio.to_thread(stack.start_provisioner)
    await survived(world, chat, whatsapp, figures)
    assert set(owners(stack)) >= {f.id for f in world.families}


async def test_provisioner_killed_mid_restart_all(world: World, figures: Tally):
    stack, chat, whatsapp = world.stack, *world.ledgers()
    admin = await admin_session(stack, world.http)
    ours = {f.id for f in world.families}
    before = {family: container for family, container in owners(stack).items() if family in ours}
    url = f"{stack.api_url}/v1/admin/restart-all"

    async def progress() -> dict:
        async with world.http.get(url, headers=admin) as resp:
            return (await resp.json())["progress"]

    async with traffic(world, chat, whatsapp):
        await asyncio.sleep(2)
        async with world.http.post(url, headers=admin) as resp:
            assert resp.status == 202, await resp.text()
        await until(lambda: progress_at_least(progress, 1), 300, "the first runtime restarted")
        stack.stop("provisioner", sig=9)
        cut = await until(lambda: finished(progress), 30, "the admin page to see the restart end")
        assert cut["state"] == "failed" and cut["done"] < cut["total"], cut
        await asyncio.sleep(1)
        await asyncio.to_thread(stack.start_provisioner)
    await survived(world, chat, whatsapp, figures)

    async with world.http.post(url, headers=admin) as resp:  # and a whole one now goes through
        assert resp.status == 202
    done = await until(lambda: finished(progress), 600, "the second restart-all")
    assert done["state"] == "done" and done["done"] == done["total"], done
    after = {family: container for family, container in owners(stack).items() if family in ours}
    assert set(after) == ours and not set(after.values()) & set(before.values()), (before, after)
    figures.notes |= {"restarted_before_the_kill": cut["done"], "of": cut["total"]}


async def progress_at_least(progress, done: int) -> bool:
    return ((await progress()).get("done") or 0) >= done


async def finished(progress) -> dict | None:
    now = await progress()
    return now if now["state"] in ("done", "failed") else None


async def test_reaper_killed_mid_eviction(world: World, figures: Tally):
    """Two families idle and due for eviction, the rest mid-reply: the reaper is killed as it
    works, then a whole run follows. The busy runtimes stay, the idle ones go, nothing is lost,
    and an evicted family comes back with its memory."""
    stack, chat, whatsapp = world.stack, *world.ledgers()
    idle, busy = world.families[:1], world.families[1:]
    for family in idle:
        stack.set_last_active(uuid.UUID(family.id), time.time() - 3600)
    before = owners(stack)
    await asyncio.gather(
        *(chat.send(f, tag("chat [slow:3]")) for f in busy),
        *(whatsapp.send(world.numbers[f.id], tag("whatsapp [slow:3]")) for f in busy),
    )
    await until(lambda: all(asked(stack, s.text) for s in chat.sent), 60, "replies in flight")

    reaper = [str(BIN / "sudo-reaper"), "--idle-sec", "600"]
    killed = await asyncio.create_subprocess_exec(*reaper, env=stack.env, stderr=subprocess.DEVNULL)
    await asyncio.sleep(random.uniform(0.05, 0.6))
    killed.kill()
    await killed.wait()
    whole = await asyncio.to_thread(
        subprocess.run, reaper, env=stack.env, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    after = owners(stack)
    assert all(after.get(f.id) == before[f.id] for f in busy), "a runtime in use was reaped"
    assert not any(f.id in after for f in idle), f"the idle runtime stayed: {whole.stderr}"
    # An evicted family says something: its agent wakes with its memory (checked in survived).
    for family in idle:
        await chat.send(family, tag("back after a nap"))
    await survived(world, chat, whatsapp, figures)


async def test_family_container_killed_mid_reply(world: World, figures: Tally):
    """Each family's agent is killed while the LLM is answering it on both channels: sudo-api
    redelivers the chat message, and the agent revived by sudo-api's watcher replays the
    WhatsApp message its journal still owes a reply."""
    stack, chat, whatsapp = world.stack, *world.ledgers()
    await talk(world, chat, whatsapp, slow=4)
    await until(
        lambda: all(asked(stack, t) for t in [s.text for s in chat.sent] + wa_texts(whatsapp)),
        60,
        "every reply in flight",
    )
    for family in world.families:
        stack.container(uuid.UUID(family.id)).kill()
    figures.notes["containers_killed"] = len(world.families)
    await survived(world, chat, whatsapp, figures)


def wa_texts(whatsapp: WhatsAppLedger) -> list[str]:
    return [text for _, text in whatsapp.acknowledged.values()]


@pytest.fixture
def engine(stack: Stack, tmp_path: Path) -> Iterator[EngineRelay]:
    """The provisioner restarted onto a relay of the engine's socket."""
    relay = EngineRelay(tmp_path / "engine.sock")
    relay.start()
    stack.stop("provisioner")
    stack.start_provisioner({"DOCKER_HOST": f"unix://{relay.path}"})
    yield relay
    relay.kill()
    stack.stop("provisioner")
    stack.start_provisioner()


async def test_docker_engine_restarted_under_load(world: World, engine: EngineRelay, figures: Tally):
    """The engine goes away for a few seconds under traffic and stops every container, as a
    restart without live-restore does; messages said meanwhile wait for it, not fail."""
    stack, chat, whatsapp = world.stack, *world.ledgers()
    away = size(6, 20)
    async with traffic(world, chat, whatsapp):
        await asyncio.sleep(3)
        engine.kill()
        stopping = [c for c in stack.containers() if c.status == "running"]
        await asyncio.gather(*(asyncio.to_thread(c.stop, timeout=3) for c in stopping))
        await asyncio.sleep(away)
        await asyncio.to_thread(engine.start)
        await asyncio.sleep(3)
    figures.notes |= {"engine_away_sec": away, "containers_stopped": len(stopping)}
    await survived(world, chat, whatsapp, figures)
