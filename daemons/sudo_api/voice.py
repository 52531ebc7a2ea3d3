"""Voice: LiveKit access tokens for a family's paired device and the admin's LiveKit server.

Each home device talks in its own room, `room_<user_id>_<device_id>`, so a family's other
devices never hear it. A paired device gets a short-lived token that lets it join that room
only, and whose room configuration dispatches the voice agent (`sudo-voice`), so the voice
bridge joins the same room when the device does.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from livekit import api as livekit

from sudo_core.families import VOICE_AGENT, room_for

TOKEN_TTL = datetime.timedelta(minutes=15)
ROOM_DEPARTURE_SEC = 2
"""How long LiveKit keeps a device's room once the device left it. LiveKit dispatches a room's
agents only when it creates the room: a device whose agent is gone (the voice bridge
restarted) leaves and joins again, and must find a new room, with a new agent."""


class VoiceNotConfigured(RuntimeError):
    pass


def server_settings(settings: dict[str, Any]) -> dict[str, str]:
    """The admin's LiveKit server: url, api_key and api_secret, all three set."""
    server = {k: settings.get(f"livekit.{k}") or "" for k in ("url", "api_key", "api_secret")}
    if not all(server.values()):
        raise VoiceNotConfigured("voice is not set up: an admin sets the LiveKit URL, key and secret")
    return server


def device_token(settings: dict[str, Any], device: uuid.UUID, family: uuid.UUID) -> dict[str, Any]:
    """A token for `device` to join its own room, with the voice agent dispatched there."""
    server = server_settings(settings)
    url, key, secret = server["url"], server["api_key"], server["api_secret"]
    room = room_for(family, device)
    token = (
        livekit.AccessToken(key, secret)
        .with_identity(f"device-{device}")
        .with_name("Home device")
        .with_ttl(TOKEN_TTL)
        .with_grants(livekit.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
        .with_room_config(
            livekit.RoomConfiguration(
                agents=[livekit.RoomAgentDispatch(agent_name=VOICE_AGENT)],
                departure_timeout=ROOM_DEPARTURE_SEC,
            )
        )
        .to_jwt()
    )
    return {"url": url, "room": room, "token": token, "expires_at": time.time() + TOKEN_TTL.total_seconds()}
