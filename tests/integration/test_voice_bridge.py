"""sudo-voice-bridge as systemd runs it: notify protocol, the LiveKit worker protocol, dispatch.

The LiveKit server is the stand-in of tests/livekit_server.py (its worker-dispatch half); sudo-api
and the database are real. The bridge waits for the admin's LiveKit settings, registers under
the agent name the devices' tokens dispatch, takes rooms of existing families only, registers
again when the admin changes the server, and stops cleanly.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from control_plane import pair, sign_up
from livekit_server import LiveKitServer
from ports import free_port
from stack import BIN, Notifications, Stack

from sudo_core.families import VOICE_AGENT

pytestmark = pytest.mark.docker


async def notified(notes: Notifications, message: str, within: float = 30.0) -> None:
    assert await asyncio.to_thread(notes.wait_for, message, within), (message, notes.seen)


async def set_livekit(api: Stack, server: LiveKitServer, key: str, secret: str) -> None:
    for name, value in (("url", server.url), ("api_key", key), ("api_secret", secret)):
        await api.db.aio(api.db.set_setting, f"livekit.{name}", value)


@pytest.fixture
def bridge(api: Stack, tmp_path) -> Iterator[tuple[subprocess.Popen, Notifications, str]]:
    notes = Notifications(tmp_path / "notify")
    metrics = f"127.0.0.1:{free_port()}"
    env = api.env | {
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "SUDO_VOICE_API_URL": api.service_url,
        "SUDO_VOICE_HTTP": f"127.0.0.1:{free_port()}",
        "SUDO_VOICE_METRICS": metrics,
    }
    log = (tmp_path / "bridge.log").open("wb")
    proc = subprocess.Popen([str(BIN / "sudo-voice-bridge")], env=env, stdout=log, stderr=log)
    try:
        yield proc, notes, metrics
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        api.db.execute("DELETE FROM settings WHERE key LIKE 'livekit.%'")


async def test_the_bridge_serves_family_rooms_of_the_admins_livekit_server(api: Stack, http, bridge):
    proc, notes, metrics = bridge
    await notified(notes, "READY=1")
    await notified(notes, "STATUS=waiting for the LiveKit settings")

    key, secret = "APIbridge", secrets.token_hex(32)
    livekit = LiveKitServer(key, secret)
    await livekit.start()
    try:
        await set_livekit(api, livekit, key, secret)
        await asyncio.wait_for(livekit.registered.wait(), 60)
        [worker] = livekit.workers
        assert worker.registration.agent_name == VOICE_AGENT  # explicit dispatch only
        await notified(notes, f"STATUS=registered with LiveKit at {livekit.url}")

        family = await sign_up(http, api.api_url, "Lovelace")
        device_id, _ = await pair(http, api, family, "Parlour Pi")
        strangers = (f"room_{family.id}", f"room_{family.id}_{uuid.uuid4()}", "room_nonsense", "lobby")
        for stranger in strangers:
            refused = await livekit.offer(stranger, VOICE_AGENT)
            # Refused by the bridge for good (terminate), not for lack of capacity.
            assert not refused.available and refused.terminate, stranger
        taken = await livekit.offer(f"room_{family.id}_{device_id}", VOICE_AGENT)
        assert taken.available and taken.participant_identity == VOICE_AGENT
        assert livekit.refused == []

        # The admin moves LiveKit to a new server with a new secret: the bridge follows.
        key2, secret2 = "APIbridge2", secrets.token_hex(32)
        moved = LiveKitServer(key2, secret2)
        await moved.start()
        try:
            await set_livekit(api, moved, key2, secret2)
            await asyncio.wait_for(moved.registered.wait(), 90)
            assert [w.registration.agent_name for w in moved.workers] == [VOICE_AGENT]
            assert moved.refused == []
            await asyncio.sleep(1)
            assert livekit.workers == []  # it left the old one
        finally:
            await moved.stop()
    finally:
        await livekit.stop()

    async with http.get(f"http://{metrics}/metrics") as resp:
        assert resp.status == 200 and "sudo_voice_turns_total" in await resp.text()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await notified(notes, "STOPPING=1", 1)
