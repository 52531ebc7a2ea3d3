"""The agent speaks first: a cron job set through Hermes, delivering to the sudo_voice platform.

A real Hermes container with the bundled plugins, the real sudo-api and database, the LLM
stand-in writing the reminder; a home device is online by its heartbeats. The reminder reaches
the announcements of that device's room as the voice bridge's client asks for them, and the
family's Home thread, live on an open page; with no device online it is a note there. (The
bridge saying it in a session: tests/integration/test_voice.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest
from control_plane import Family, pair, run_cron_now, sign_up
from stack import Stack

from sudo_core.families import room_for
from sudo_voice_bridge.sudo_api import SudoApi

pytestmark = pytest.mark.docker
REMINDER = "Tell the family it is time to leave for school"


async def beat(http: aiohttp.ClientSession, api: Stack, device_token: str) -> None:
    """The device's heartbeat: it is online (and its family's agent is woken up)."""
    headers = {"Authorization": f"Bearer {device_token}"}
    async with http.post(f"{api.api_url}/v1/devices/heartbeat", headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def home_thread(family: Family) -> list[dict]:
    status, body = await family.call("GET", "/v1/chat/messages?thread=home")
    assert status == 200, body
    return body["messages"]


async def until(check: Callable, within: float, what: str):
    deadline = time.monotonic() + within
    while not (found := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)
    return found


async def running_agent(family: Family, api: Stack):
    """The family's container, once its agent answers."""
    status, body = await family.call("POST", "/v1/runtime/ensure")
    assert status == 200, body
    return api.container(uuid.UUID(family.id))


async def test_a_cron_reminder_for_home_is_announced_in_the_rooms_of_devices_online(api: Stack, http):
    family = await sign_up(http, api.api_url, "Tereshkova")
    kitchen, kitchen_token = await pair(http, api, family, "Kitchen Pi")
    attic, _ = await pair(http, api, family, "Attic Pi")  # paired, never switched on
    await beat(http, api, kitchen_token)
    container = await running_agent(family, api)
    kitchen_room, attic_room = (room_for(uuid.UUID(family.id), uuid.UUID(d)) for d in (kitchen, attic))

    live: list[dict] = []  # what the owner's open page is told

    async def follow() -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
        async with http.get(f"{family.base}/v1/chat/stream", headers=family.headers, timeout=timeout) as resp:
            async for line in resp.content:
                if line.startswith(b"data: ") and (event := json.loads(line[6:]))["type"] == "message":
                    live.append(event["message"])

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.5)  # the page is open before the agent speaks
        await asyncio.to_thread(run_cron_now, container, REMINDER, "sudo_voice")
        async with SudoApi(api.service_url, api.service_token) as bridge:
            # What the kitchen's session, holding its long poll, is handed.
            [announcement] = await bridge.announcements(kitchen_room, 60)
            assert REMINDER in announcement.text and "Cronjob Response" not in announcement.text
            assert await bridge.announcements(attic_room, 0) == []  # offline: not for its room
            [note] = await home_thread(family)
            assert (note["id"], note["status"], note["role"]) == (announcement.id, "to_speak", "assistant")
            await bridge.announcement_spoken(kitchen_room, announcement.id)
            assert await bridge.announcements(kitchen_room, 0) == []
        [said] = await home_thread(family)
        assert said["status"] == "spoken" and said["text"] == announcement.text
        deadline = time.monotonic() + 10
        while [m["status"] for m in live] != ["to_speak", "spoken"]:
            assert time.monotonic() < deadline, f"the open page was told {live}"
            await asyncio.sleep(0.1)
    finally:
        follower.cancel()
    assert all(m["id"] == announcement.id and m["home"] for m in live)
    # Not one of the member's own messages: their thread has none of it.
    status, body = await family.call("GET", "/v1/chat/messages")
    assert status == 200 and body["messages"] == []


async def test_with_no_device_online_a_cron_reminder_for_home_is_a_note(api: Stack, http):
    family = await sign_up(http, api.api_url, "Gagarin")
    device, _ = await pair(http, api, family, "Hall Pi")  # paired, switched off
    container = await running_agent(family, api)
    await asyncio.to_thread(run_cron_now, container, REMINDER, "sudo_voice")

    [note] = await until(lambda: home_thread(family), 120, "the note in the Home thread")
    assert note["status"] == "not_spoken" and REMINDER in note["text"]
    async with SudoApi(api.service_url, api.service_token) as bridge:
        assert await bridge.announcements(room_for(uuid.UUID(family.id), uuid.UUID(device)), 0) == []
    status, body = await family.call("GET", "/v1/chat/messages")
    assert status == 200 and body["messages"] == []
