"""Fixtures: one real control plane (provisioner + gateway + LLM stand-in) for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from stack import Stack

from sudo_core.provisioner_client import ProvisionerClient


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
