"""A family's backup restored onto a fresh host gives the agent back its memory and the family
its history and its ways in.

The fresh host is a second control plane: its own state directory and database, its own
network and subnet, its own host secret (so every per-family key the agent gets there differs),
its own LLM and Twilio stand-ins. What the family had on the old host (the web chat, WhatsApp,
a paired home device, an entry in its agent's memory) is all checked there, through the API and
through what the agent sends the LLM: the LLM stand-in reports which remembered texts appear in
a request's messages, the system prompt included, where Hermes puts the agent's memory.

The admin's settings (the Twilio account among them) belong to the host and are not in a
family's backup: the fresh host's admin sets its own, as this test does. Sessions (bearer tokens,
cookies) stay behind by design: members log in again with their passwords, which come along.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from control_plane import Family, sign_up
from ledger import (
    ChatLedger,
    WhatsAppLedger,
    answered,
    device_of,
    history,
    link_number,
    memory_of,
    remember,
    tag,
    twilio_ready,
    until,
)
from stack import BIN, Stack, running_host

PASSWORD = "correct horse battery"  # what sign_up sets


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fresh host."""
    with running_host(tmp_path_factory.mktemp("fresh-host")) as host:
        yield host


async def sudoctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "sudoctl"), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


async def look_for(http: aiohttp.ClientSession, stack: Stack, *texts: str) -> None:
    async with http.post(f"{stack.llm_url}/_stub/look-for", json={"texts": list(texts)}) as resp:
        assert resp.status == 200


def request_for(stack: Stack, text: str) -> dict:
    """The last LLM request that carried this text as the family's latest words."""
    return [r for r in stack.llm_requests() if text in r["last_user"]][-1]


async def test_a_family_restored_on_a_fresh_host(api: Stack, fresh: Stack, http, figures, tmp_path: Path):
    # On the old host: the agent remembers something before the family says anything, so the
    # sessions it starts carry the memory in their system prompt.
    await twilio_ready(api)
    old = await sign_up(http, api.api_url, "Restored")
    family_id = uuid.UUID(old.id)
    number = f"+4477005{random.randrange(10**5):05d}"
    await link_number(api, old, number)
    device = await device_of(api, old)
    status, body = await old.call("POST", "/v1/runtime/ensure")
    assert status == 200, body
    entry = tag("The family's dog is called")
    remember(api, family_id, entry)
    await look_for(http, api, entry)
    first = tag("remember the blue kite")
    await answered(old, first)
    whatsapp_old = WhatsAppLedger(api, http)
    first_whatsapp = tag("on whatsapp: the red bicycle")
    assert await whatsapp_old.send(number, first_whatsapp) == 200
    assert (await whatsapp_old.settle()).answered == 1
    assert entry in request_for(api, first)["found"], "the control: the old host's agent had the memory"
    before = strip_n(await history(old))

    # The backup, and the restore onto the fresh host.
    backup = tmp_path / "family.tar.gz"
    made = await sudoctl(api, "backup", old.id, "-o", str(backup))
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    restored = await sudoctl(fresh, "restore", old.id, str(backup))
    assert restored.returncode == 0, restored.stderr
    figures.notes["restore_sec"] = round(time.monotonic() - started, 2)
    figures.notes["backup_bytes"] = backup.stat().st_size
    assert fresh.secret != api.secret and fresh.network != api.network

    # The family's ways in: its password (the old session token is the old host's alone), its
    # device's token, its WhatsApp number.
    async with http.get(f"{fresh.api_url}/v1/me", headers=old.headers) as resp:
        assert resp.status == 401
    moved = await log_in(http, fresh, old.account["email"])
    assert strip_n(await history(moved)) == before
    async with http.post(
        f"{fresh.api_url}/v1/devices/heartbeat", headers={"Authorization": f"Bearer {device}"}
    ) as resp:
        assert resp.status == 200, await resp.text()

    # The agent, on the fresh host's runtime, carries on its conversations with its memory:
    # the earlier words in the session's history, the memory entry in its system prompt.
    await twilio_ready(fresh)
    await look_for(http, fresh, entry)
    again = tag("what should you remember?")
    await answered(moved, again)
    asked = request_for(fresh, again)
    assert any(first in m for m in asked["user_messages"]), "the web chat's history was lost"
    assert entry in asked["found"], "the agent lost its memory"
    whatsapp_new = WhatsAppLedger(fresh, http)
    again_whatsapp = tag("on whatsapp: and what else?")
    assert await whatsapp_new.send(number, again_whatsapp) == 200
    outcome = await whatsapp_new.settle()
    assert outcome.answered == 1 and not outcome.problems, outcome.problems
    asked = request_for(fresh, again_whatsapp)
    assert any(first_whatsapp in m for m in asked["user_messages"]), "the WhatsApp history was lost"
    assert entry in asked["found"]
    # A conversation that starts on the fresh host gets the memory from the restored memory file.
    newcomer = f"+4477004{random.randrange(10**5):05d}"
    await link_number(fresh, moved, newcomer)
    hello = tag("on whatsapp: hello from a new phone")
    assert await whatsapp_new.send(newcomer, hello) == 200
    await until(lambda: any(hello in r["last_user"] for r in fresh.llm_requests()), 180, "the new chat")
    assert entry in request_for(fresh, hello)["found"]
    memory = memory_of(fresh, family_id)
    assert entry in memory and "Family identity" in memory

    ledger = ChatLedger()  # the history keeps growing there, in order
    assert await ledger.send(moved, tag("one more"))
    assert not (await ledger.settle()).problems
    after = strip_n(await history(moved))
    assert after[: len(before)] == before and len(after) == len(before) + 4
    figures.notes |= {
        "messages_restored": len(before),
        "checks": {
            "password_login": True,
            "device_token": True,
            "whatsapp_number": True,
            "chat_history_seen_by_agent": True,
            "whatsapp_history_seen_by_agent": True,
            "memory_in_system_prompt": True,
            "memory_file": True,
        },
    }


async def log_in(http: aiohttp.ClientSession, stack: Stack, email: str) -> Family:
    async with http.post(
        f"{stack.api_url}/v1/auth/login", json={"email": email, "password": PASSWORD}
    ) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    return Family(http, stack.api_url, data["token"], data["account"] | {"email": email})


def strip_n(messages: list[dict]) -> list[dict]:
    """Messages as a host-independent history: `n` orders one host's whole database."""
    return [{k: v for k, v in m.items() if k != "n"} for m in messages]
