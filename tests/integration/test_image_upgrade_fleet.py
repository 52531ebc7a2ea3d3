"""Hermes image upgrades on the real engine: a second build rolls through the fleet after its
canary, a broken third build is caught by its canary and rolled back, and /admin shows it.

A stack of its own (its image names and state file must not reach the session's stack), with
a short health deadline, since the broken build's Hermes never answers. The rules behind it
(failures past image.max_failures, a rollback asked for, an upgrade a stopped provisioner
left) run on the in-memory backend in tests/unit/test_image_upgrade.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator

import docker.errors
import pytest
from control_plane import admin_session, sign_up
from stack import BIN, IMAGE, Stack, running_host

from sudo_provisioner.runtimes import CANARY_PROMPT

HEALTH_TIMEOUT_SEC = 20.0
"""How long the broken build's canary is given (the only wait on it); Hermes answers in 1-3 s."""


@pytest.fixture(scope="module")
def upgrade_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_host(
        tmp_path_factory.mktemp("upgrade"),
        provisioner={"health_timeout_sec": HEALTH_TIMEOUT_SEC, "restart_grace_sec": 2.0},
        image={"max_failures": 1, "canary_timeout_sec": 60.0},
    ) as s:
        yield s


@pytest.fixture(scope="module")
def builds(upgrade_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The second build (the first plus a marker file) and a broken third one (its entrypoint
    sleeps: Hermes never starts), built from Dockerfiles as an operator would; their names."""
    client, root = upgrade_stack.docker, tmp_path_factory.mktemp("builds")
    tag = secrets.token_hex(3)
    names = {"second": f"sudo-hermes-upgrade:second-{tag}", "broken": f"sudo-hermes-upgrade:broken-{tag}"}
    marker = f"second build {tag}\n"
    dockerfiles = {
        "second": f"FROM {IMAGE}\nCOPY marker /etc/sudo-build-marker\n",
        "broken": f'FROM {names["second"]}\nENTRYPOINT ["sh", "-c", "exec sleep 3600", "sh"]\n',
    }
    try:
        for build, dockerfile in dockerfiles.items():
            context = root / build
            context.mkdir()
            (context / "Dockerfile").write_text(dockerfile)
            (context / "marker").write_text(marker)
            client.images.build(path=str(context), tag=names[build], rm=True)
        yield names | {"marker": marker}
    finally:
        for container in upgrade_stack.containers():  # an image in use is not removed
            container.remove(force=True)
        scope = upgrade_stack.network.lower()
        for name in (f"{scope}:current", f"{scope}:previous", names["broken"], names["second"]):
            with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
                client.images.remove(name)


def sudoctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sudoctl"), *args], env=stack.env, capture_output=True, text=True, timeout=300
    )


async def test_an_upgrade_rolls_the_fleet_and_a_broken_build_is_rolled_back(
    upgrade_stack: Stack, builds: dict[str, str], http
):
    stack = upgrade_stack
    admin = await admin_session(stack, http)
    families = [await sign_up(http, stack.api_url, name) for name in ("Ada", "Grace", "Edsger")]
    running, asleep = families[:2], families[2]
    for family in running:
        assert (await family.call("POST", "/v1/runtime/ensure"))[0] == 200
    first = stack.docker.images.get(IMAGE).id
    second = stack.docker.images.get(builds["second"]).id

    def fleet() -> dict[str, str]:
        """Each running runtime's image id, by family."""
        out = {}
        for family in families:
            container = stack.container(uuid.UUID(family.id))
            if container is not None and container.status == "running":
                out[family.id] = container.image.id
        return out

    assert fleet() == {f.id: first for f in running}

    # The second build, from the command line: canary, then the rest of the fleet.
    began = time.monotonic()
    upgraded = await asyncio.to_thread(sudoctl, stack, "image", "upgrade", builds["second"])
    print(f"upgrade to the second build: {time.monotonic() - began:.1f} s")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert f"upgraded to {builds['second']} (0 runtime(s) failed)" in upgraded.stdout
    assert "answered a chat turn" in upgraded.stdout
    assert fleet() == {f.id: second for f in running}
    for family in running:
        shown = stack.container(uuid.UUID(family.id)).exec_run(["cat", "/etc/sudo-build-marker"])
        assert shown.output.decode() == builds["marker"]
    # The canary's turn went through Hermes and the gateway to the provider.
    assert any(r["last_user"] == CANARY_PROMPT for r in stack.llm_requests())
    state = stack.settings.core.state_dir / "runtime-image.json"
    assert state.stat().st_mode & 0o777 == 0o640  # sudo-api (group sudo-data) reads it
    shown = await asyncio.to_thread(sudoctl, stack, "image", "show")
    assert f"current:  {builds['second']}" in shown.stdout and f"previous: {IMAGE}" in shown.stdout

    # The broken build, from the admin's button (its API): the canary never answers /health.
    began = time.monotonic()
    async with http.post(
        f"{stack.api_url}/v1/admin/image/upgrade", json={"ref": builds["broken"]}, headers=admin
    ) as resp:
        assert resp.status == 202, await resp.text()
    deadline = time.monotonic() + HEALTH_TIMEOUT_SEC + 120
    while True:
        async with http.get(f"{stack.api_url}/v1/admin/image", headers=admin) as resp:
            body = await resp.json()
        if body["progress"]["state"] != "running":
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)
    print(f"the broken build, rolled back: {time.monotonic() - began:.1f} s")
    progress, image = body["progress"], body["image"]
    assert progress["state"] == "rolled back", progress
    assert "the canary failed" in progress["reason"] and "did not answer /health" in progress["reason"]
    assert image["current"]["ref"] == builds["second"] and image["previous"]["ref"] == IMAGE
    assert image["upgrade"] is None
    last = image["history"][0]
    assert (last["kind"], last["image"], last["from_image"]) == (
        "rolled back",
        builds["second"],
        builds["broken"],
    )
    assert fleet() == {f.id: second for f in running}
    # Logged with its fields (journald's when under systemd), and shown on /admin.
    assert f"rolled_back={builds['broken']}" in stack.log_of("provisioner")
    async with http.get(f"{stack.api_url}/admin", headers=admin) as resp:
        page = await resp.text()
    assert f'id="image-current">{builds["second"]}<' in page
    assert "rolled back" in page and builds["broken"] in page and "the canary failed" in page

    # A family started later runs the second build too.
    assert (await asleep.call("POST", "/v1/runtime/ensure"))[0] == 200
    assert fleet() == {f.id: second for f in families}
