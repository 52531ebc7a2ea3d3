"""The rules of an image upgrade (sudo_provisioner/images.py) on the in-memory backend: the
canary, the failures allowed, the rollback, an upgrade a stopped provisioner left. The same
against the real engine and Hermes: tests/integration/test_image_upgrade_fleet.py."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fake_backend import FakeBackend

from sudo_core import runtime_image
from sudo_core.config import ImageSettings, ProvisionerSettings, RuntimeSettings, Settings
from sudo_core.db import Database
from sudo_core.families import runtime_name
from sudo_provisioner.images import INTERRUPTED, ImageUpgrades, UpgradeRefused
from sudo_provisioner.runtimes import CANARY_PROMPT, RuntimeManager


class Hermes:
    """/health and the chat turn, as every fake container answers them (all at 127.0.0.1)."""

    def __init__(self) -> None:
        self.turns: list[str] = []

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(self, request: web.Request) -> web.Response:
        self.turns.append((await request.json())["messages"][-1]["content"])
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ready"}}]})


@pytest.fixture(scope="module")
async def hermes() -> AsyncIterator[tuple[Hermes, int]]:
    hermes = Hermes()
    app = web.Application()
    app.router.add_get("/health", hermes.health)
    app.router.add_post("/v1/chat/completions", hermes.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield hermes, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


class Rig:
    def __init__(self, tmp_path, port: int, max_failures: int, concurrency: int) -> None:
        self.state_dir = tmp_path
        self.settings = dataclasses.replace(
            Settings(),
            runtime=RuntimeSettings(image="sudo-hermes:test", api_port=port, network="sudo-rt", memory="1k"),
            provisioner=ProvisionerSettings(health_timeout_sec=5, restart_concurrency=concurrency),
            image=ImageSettings(max_failures=max_failures),
        )
        self.db = Database(tmp_path / "sudo.db")
        self.backend = FakeBackend()
        self.first = self.backend.images["sudo-hermes:test"]
        self.events: list[dict[str, Any]] = []

    async def start(self) -> ImageUpgrades:
        """A provisioner starting: its manager, and the upgrades as the state file says."""
        self.manager = RuntimeManager(self.settings, self.db, self.backend, b"s" * 32)
        await self.manager.start()
        self.upgrades = ImageUpgrades(self.manager, self.state_dir)
        return self.upgrades

    async def progress(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def fleet(self, n: int) -> list[uuid.UUID]:
        families = [(await self.db.aio(self.db.create_family, f"F{i}")).id for i in range(n)]
        for i, family in enumerate(families):
            await self.db.aio(self.db.touch_family, family, 1000.0 + i)
            await self.manager.ensure(family)
        return families

    def images(self) -> dict[str, str]:
        """Each running runtime's image id, by name."""
        return {n: r.image for n, r in self.backend.containers.items() if r.running}

    def saved(self) -> runtime_image.ImageState:
        return runtime_image.read(self.state_dir)


@pytest.fixture
async def rig(tmp_path, hermes) -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(max_failures: int = 1, concurrency: int = 2) -> Rig:
        rig = Rig(tmp_path, hermes[1], max_failures, concurrency)
        made.append(rig)
        await rig.start()
        return rig

    yield make
    for rig in made:
        await rig.manager.close()
        rig.db.close()


async def test_an_upgrade_tries_a_canary_then_rolls_through_the_fleet(rig, hermes):
    r = await rig()
    families = await r.fleet(3)
    second = r.backend.build("sudo-hermes:second")
    turns = len(hermes[0].turns)
    done = await r.upgrades.upgrade("sudo-hermes:second", r.progress)
    assert done["outcome"] == "upgraded" and done["failed"] == []
    assert set(r.images().values()) == {second.id}
    assert hermes[0].turns[turns:] == [CANARY_PROMPT]  # the canary's one real turn
    # The canary is the least recently active family, and goes first; the others follow.
    assert r.events[0] == {
        "event": "canary",
        "image": "sudo-hermes:second",
        "from": "sudo-hermes:test",
        "family": str(families[0]),
    }
    kinds = [(e["event"], e.get("family")) for e in r.events if e["event"] in ("restarted", "kept")]
    assert kinds == [
        ("kept", str(families[0])),
        ("restarted", str(families[1])),
        ("restarted", str(families[2])),
    ]
    saved = r.saved()
    assert saved.current == runtime_image.ImageRef("sudo-hermes:second", second.id)
    assert saved.previous == runtime_image.ImageRef("sudo-hermes:test", r.first.id)
    assert saved.upgrade is None and saved.history[0].kind == "upgraded"
    assert r.backend.images["sudo-rt:current"].id == second.id
    assert r.backend.images["sudo-rt:previous"].id == r.first.id
    # A new runtime is made from the pinned image, whatever its name points at since.
    r.backend.build("sudo-hermes:second")
    other = (await r.db.aio(r.db.create_family, "Later")).id
    assert (await r.manager.ensure(other)).image == second.id
    with pytest.raises(UpgradeRefused, match="already"):
        await r.upgrades.upgrade("sudo-rt:current", r.progress)


async def test_a_canary_that_never_comes_up_rolls_back_and_the_fleet_is_untouched(rig):
    r = await rig()
    families = await r.fleet(3)
    before = dict(r.backend.containers)
    broken = r.backend.build("sudo-hermes:broken")
    r.backend.crash_images.add(broken.id)
    done = await r.upgrades.upgrade("sudo-hermes:broken", r.progress)
    assert done["outcome"] == "rolled back" and "the canary failed" in done["reason"]
    assert "exited with code 137" in done["reason"]
    # Only the canary was touched, and it is back on the image before; the others never moved.
    assert set(r.images().values()) == {r.first.id}
    canary = runtime_name(families[0])
    assert [n for n in before if before[n].container_id == r.backend.containers[n].container_id] == [
        runtime_name(f) for f in families[1:]
    ]
    assert r.backend.containers[canary].running
    saved = r.saved()
    assert saved.current == runtime_image.ImageRef("sudo-hermes:test", r.first.id) and saved.previous is None
    assert saved.upgrade is None
    assert (saved.history[0].kind, saved.history[0].image, saved.history[0].from_image) == (
        "rolled back",
        "sudo-hermes:test",
        "sudo-hermes:broken",
    )


async def test_failures_past_max_stop_the_roll_and_roll_it_back(rig):
    r = await rig(max_failures=1)
    families = await r.fleet(5)
    second = r.backend.build("sudo-hermes:second")
    # The canary (the first) comes up; two of the others crash on the new image.
    r.backend.crash_names |= {runtime_name(families[1]), runtime_name(families[2])}

    async def progress(event: dict[str, Any]) -> None:
        if event["event"] == "rolling back":  # they crash on the new image only
            r.backend.crash_names.clear()
        await r.progress(event)

    done = await r.upgrades.upgrade("sudo-hermes:second", progress)
    assert done["outcome"] == "rolled back" and "2 runtime(s) failed" in done["reason"]
    assert r.images() == {runtime_name(f): r.first.id for f in families}  # all back, the crashed ones too
    forward = r.events[: next(i for i, e in enumerate(r.events) if e["event"] == "rolling back")]
    assert [e["event"] for e in forward if e["event"] == "failed"] == ["failed", "failed"]
    summary = r.saved().history[0]
    assert summary.kind == "rolled back" and summary.from_image == "sudo-hermes:second"
    assert r.saved().current.id == r.first.id and r.saved().previous is None
    assert second.id not in r.images().values()


async def test_failures_within_max_let_the_upgrade_finish(rig):
    r = await rig(max_failures=1)
    families = await r.fleet(3)
    second = r.backend.build("sudo-hermes:second")
    r.backend.crash_names.add(runtime_name(families[2]))
    done = await r.upgrades.upgrade("sudo-hermes:second", r.progress)
    assert done["outcome"] == "upgraded" and [f["family"] for f in done["failed"]] == [str(families[2])]
    assert r.images() == {runtime_name(f): second.id for f in families[:2]}
    assert r.saved().history[0].failed == 1


async def test_rollback_returns_to_the_previous_image_and_back_again(rig):
    r = await rig()
    await r.fleet(2)
    with pytest.raises(UpgradeRefused, match="no previous image"):
        await r.upgrades.rollback(r.progress)
    second = r.backend.build("sudo-hermes:second")
    await r.upgrades.upgrade("sudo-hermes:second", r.progress)
    done = await r.upgrades.rollback(r.progress)
    assert done["outcome"] == "rolled back" and done["reason"] == "asked for"
    assert set(r.images().values()) == {r.first.id}
    saved = r.saved()
    assert (saved.current.id, saved.previous.id) == (r.first.id, second.id)
    await r.upgrades.rollback(r.progress)
    assert set(r.images().values()) == {second.id}


class Killed(BaseException):
    """The provisioner's process ends here."""


async def test_an_upgrade_a_stopped_provisioner_left_is_rolled_back_at_start(rig):
    r = await rig(concurrency=1)
    families = await r.fleet(3)
    second = r.backend.build("sudo-hermes:second")
    # The provisioner is killed once the canary passed and one other runtime was recreated.
    upgrades = r.upgrades

    async def killed(event: dict[str, Any]) -> None:
        if event["event"] == "restarted":
            raise Killed

    with pytest.raises(Killed):
        await upgrades.upgrade("sudo-hermes:second", killed)
    assert r.saved().upgrade.phase == "rolling"
    assert sorted(r.images().values()) == sorted([second.id, second.id, r.first.id])  # split
    await r.manager.close()

    started = await r.start()  # the next provisioner
    assert started.interrupted
    done = await started.resume(r.progress)
    assert done["outcome"] == "rolled back" and done["reason"] == INTERRUPTED
    assert r.images() == {runtime_name(f): r.first.id for f in families}
    assert r.saved().upgrade is None and r.saved().current.id == r.first.id


def test_the_state_file_reads_back_what_was_written(tmp_path):
    one = runtime_image.ImageRef("a:1", "sha256:" + "a" * 64)
    two = runtime_image.ImageRef("b:2", "sha256:" + "b" * 64)
    state = runtime_image.ImageState(
        current=two,
        previous=one,
        upgrade=runtime_image.Upgrade(two, one, None, "rolling", ("f1",), 5.0),
    ).with_event(runtime_image.Event(6.0, "upgraded", "b:2", "a:1"))
    runtime_image.write(tmp_path, state)
    assert runtime_image.read(tmp_path) == state
    assert (tmp_path / runtime_image.STATE_FILE).stat().st_mode & 0o777 == 0o640
    (tmp_path / runtime_image.STATE_FILE).write_text(json.dumps({"current": {"ref": 1}}))
    with pytest.raises(runtime_image.StateUnreadable):
        runtime_image.read(tmp_path)
    shown = runtime_image.summary(state, "sudo-hermes:0.19.0")
    assert shown["current"] == {"ref": "b:2", "id": "b" * 12} and shown["upgrade"]["phase"] == "rolling"
    assert runtime_image.summary(runtime_image.ImageState(), "x:1")["current"] == {"ref": "x:1", "id": None}
