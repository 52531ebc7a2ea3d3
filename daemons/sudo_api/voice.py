"""Voice: LiveKit access tokens for a family's paired device, and the room naming the bridge reads.

Each family talks in its own room, `room_<user_id>`. A paired device gets a short-lived token
that lets it join that room only, and whose room configuration dispatches the voice agent
(`sudo-voice`), so the voice bridge joins the same room when the device does.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from livekit import api as livekit

VOICE_AGENT = "sudo-voice"
ROOM_PREFIX = "room_"
TOKEN_TTL = datetime.timedelta(minutes=15)


class VoiceNotConfigured(RuntimeError):
    pass


def room_for(family: uuid.UUID) -> str:
    return f"{ROOM_PREFIX}{family}"


def family_of_room(room: str) -> uuid.UUID | None:
    if not room.startswith(ROOM_PREFIX):
        return None
    try:
        return uuid.UUID(room.removeprefix(ROOM_PREFIX))
    except ValueError:
        return None


def device_token(settings: dict[str, Any], device: uuid.UUID, family: uuid.UUID) -> dict[str, Any]:
    """A token for `device` to join its family's room, with the voice agent dispatched there."""
    url, key, secret = (settings.get(f"livekit.{k}") for k in ("url", "api_key", "api_secret"))
    if not (url and key and secret):
        raise VoiceNotConfigured("voice is not set up: an admin sets the LiveKit URL, key and secret")
    room = room_for(family)
    token = (
        livekit.AccessToken(key, secret)
        .with_identity(f"device-{device}")
        .with_name("Home device")
        .with_ttl(TOKEN_TTL)
        .with_grants(livekit.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
        .with_room_config(
            livekit.RoomConfiguration(agents=[livekit.RoomAgentDispatch(agent_name=VOICE_AGENT)])
        )
        .to_jwt()
    )
    return {"url": url, "room": room, "token": token, "expires_at": time.time() + TOKEN_TTL.total_seconds()}
