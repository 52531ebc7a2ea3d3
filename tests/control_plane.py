"""Fixtures and helpers shared by the suites that run a real control plane (tests/integration,
tests/reliability): one Stack per suite's session, sudo-api on it, families signed up through
the API, paired devices and admin sessions. Each suite's conftest imports the fixtures it uses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from PIL import Image
from stack import BIN, Stack

from sudo_core.provisioner_client import ProvisionerClient

PASSWORD = "correct horse battery"
"""Every test account's password."""


def png(rgb: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A small photo a member sends."""
    out = io.BytesIO()
    Image.new("RGB", (24, 16), rgb).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.start_gateway()
        s.start_provisioner()
        yield s
    finally:
        s.close()


@pytest.fixture
async def provisioner(stack: Stack) -> AsyncIterator[ProvisionerClient]:
    async with ProvisionerClient(stack.socket) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def chat(http: aiohttp.ClientSession, url: str, key: str, text: str) -> str:
    """One chat completion against a family's Hermes; returns the assistant's text."""
    async with http.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "hermes-agent", "messages": [{"role": "user", "content": text}]},
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return body["choices"][0]["message"]["content"]


@pytest.fixture
def api(stack: Stack) -> Stack:
    """The stack with sudo-api running (started once, restarted by tests that stop it)."""
    proc = stack.processes.get("api")
    if proc is None or proc.poll() is not None:
        stack.start_api()
    return stack


@pytest.fixture
async def fresh_settings(api: Stack) -> AsyncIterator[None]:
    """For tests that change admin settings or the provider's keys: put them back afterwards."""
    yield
    await api.db.aio(api.db.execute, "DELETE FROM settings")
    api.llm_keys.write_text(api.llm_key + "\n")


class Family:
    """A family signed up through the API, with its bearer token."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str, account: dict) -> None:
        self.http, self.base, self.token, self.account = http, base, token, account
        self.id = account["user_id"]
        self.member_id = account["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        async with self.http.request(method, self.base + path, headers=self.headers, **kwargs) as resp:
            body = await resp.json(content_type=None) if resp.status != 204 else {}
            return resp.status, body or {}

    async def send(self, text: str) -> str:
        """Send a chat message; its id."""
        status, body = await self.call("POST", "/v1/chat/messages", json={"text": text})
        assert status == 202, body
        return body["message"]["id"]


async def sign_up(http: aiohttp.ClientSession, base: str, name: str) -> Family:
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.org"
    body = {"email": email, "password": PASSWORD, "name": name, "family_name": name}
    async with http.post(f"{base}/v1/auth/signup", json=body) as resp:
        data = await resp.json()
        assert resp.status == 201, data
    return Family(http, base, data["token"], data["account"] | {"email": email})


async def pair(http: aiohttp.ClientSession, api: Stack, family: Family, name: str) -> tuple[str, str]:
    async with http.post(f"{api.api_url}/v1/devices/pairing", json={"name": name}) as resp:
        assert resp.status == 201
        started = await resp.json()
    token = started["device_token"]
    device_auth = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{api.api_url}/v1/devices/pairing", headers=device_auth) as resp:
        assert (await resp.json())["state"] == "pending"
    async with http.post(f"{api.api_url}/v1/devices/heartbeat", headers=device_auth) as resp:
        assert resp.status == 401  # not paired yet: the token is worth nothing
    status, body = await family.call(
        "POST", "/v1/devices/pairing/complete", json={"code": started["code"].lower()}
    )
    assert status == 202, body
    async with http.get(f"{api.api_url}/v1/devices/pairing", headers=device_auth) as resp:
        said = await resp.json()  # what the device says aloud: the family, and the code to type back
    assert said["state"] == "confirming" and said["family_name"], said
    async with http.post(f"{api.api_url}/v1/devices/heartbeat", headers=device_auth) as resp:
        assert resp.status == 401  # claimed, not confirmed: still worth nothing
    status, body = await family.call(
        "POST",
        "/v1/devices/pairing/confirm",
        json={"pairing_id": body["pairing"]["id"], "code": said["confirm_code"]},
    )
    assert status == 201, body
    async with http.get(f"{api.api_url}/v1/devices/pairing", headers=device_auth) as resp:
        assert (await resp.json())["state"] == "paired"
    return body["device"]["id"], token


@contextlib.asynccontextmanager
async def phrases_heard(http: aiohttp.ClientSession, api: Stack, phrases: list[str]) -> AsyncIterator[None]:
    """The LLM stand-in's recogniser told the sentences it may hear (tests/llm_stub.py), for the
    block only: outside it, audio is named by its hash, as the other voice tests expect."""
    async with http.post(f"{api.llm_url}/_stub/phrases", json={"phrases": phrases}) as resp:
        assert resp.status == 200
    try:
        yield
    finally:
        async with http.post(f"{api.llm_url}/_stub/phrases", json={"phrases": []}) as resp:
            assert resp.status == 200


def run_cron_now(container, prompt: str, deliver: str) -> None:
    """A cron job of the family's agent set through Hermes (`hermes cron create`), delivering to
    the platform `deliver`, run now as `hermes cron run` does, in a Hermes process of its own."""
    created = container.exec_run(["hermes", "cron", "create", "1h", prompt, "--deliver", deliver])
    assert created.exit_code == 0, created.output
    job = re.search(rb"Created job: (\S+)", created.output)
    assert job, created.output
    ran = container.exec_run(["hermes", "cron", "run", job.group(1).decode()])
    assert ran.exit_code == 0, ran.output


async def create_admin(api: Stack) -> str:
    """An admin, made with sudoctl as an operator would; its email (the password is PASSWORD)."""
    email = f"admin-{uuid.uuid4().hex[:6]}@example.org"
    made = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "sudoctl"), "create-admin", "--email", email, "--password-stdin"],
        input=PASSWORD + "\n",
        env=api.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return email


async def admin_session(api: Stack, http) -> dict[str, str]:
    email = await create_admin(api)
    async with http.post(f"{api.api_url}/v1/auth/login", json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 200
        return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def join(owner: Family, name: str) -> Family:
    """An adult who joined the owner's family by invitation."""
    status, body = await owner.call("POST", "/v1/family/invitations")
    assert status == 201, body
    email = f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.org"
    joining = {"token": body["invitation"]["token"], "email": email, "password": PASSWORD, "name": name}
    async with owner.http.post(f"{owner.base}/v1/auth/join", json=joining) as resp:
        joined = await resp.json()
        assert resp.status == 201, joined
    return Family(owner.http, owner.base, joined["token"], joined["account"] | {"email": email})


async def add_child(owner: Family, name: str) -> Family:
    """A child the owner added, logged in with their username."""
    username = f"{name.lower()}{uuid.uuid4().hex[:6]}"
    body = {"username": username, "password": PASSWORD, "name": name}
    status, created = await owner.call("POST", "/v1/family/children", json=body)
    assert status == 201, created
    async with owner.http.post(
        f"{owner.base}/v1/auth/login", json={"login": username, "password": PASSWORD}
    ) as resp:
        logged = await resp.json()
        assert resp.status == 200, logged
    return Family(owner.http, owner.base, logged["token"], logged["account"] | {"email": username})
