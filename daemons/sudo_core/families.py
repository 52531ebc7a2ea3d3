"""Family identity: ids, container, volume and voice room names, and per-family keys.

Per-family keys are derived by HMAC from the host secret and never stored: the provisioner
computes them when it writes a container's config, the gateway recomputes them to check a
request. A leaked family key opens only that family's agent or that family's LLM quota.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

RUNTIME_PREFIX = "hermes-user-"
ROOM_PREFIX = "room_"
VOICE_AGENT = "sudo-voice"
"""The livekit-agents name of the voice bridge, which devices' tokens dispatch to their room."""
_LLM_KEY = re.compile(r"^sk-sudo-([0-9a-f]{32})-([0-9a-f]{64})$")


class BadFamilyId(ValueError):
    """A family id that is not a UUID."""


def parse_family_id(text: str) -> uuid.UUID:
    """The family's UUID, or BadFamilyId with a message fit for an API client."""
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise BadFamilyId(f"family id must be a UUID, got {text!r}") from None


def runtime_name(family: uuid.UUID) -> str:
    return f"{RUNTIME_PREFIX}{family.hex}"


def volume_name(family: uuid.UUID) -> str:
    return f"{RUNTIME_PREFIX}{family.hex}-data"


def room_for(family: uuid.UUID, device: uuid.UUID) -> str:
    """A home device's LiveKit room, where it and the voice bridge meet: one per device, so the
    family's other devices never hear it."""
    return f"{ROOM_PREFIX}{family}_{device}"


def family_of_room(room: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(family, device) of a device's room; None for any other name."""
    family, _, device = room.removeprefix(ROOM_PREFIX).partition("_")
    if not room.startswith(ROOM_PREFIX):
        return None
    try:
        return uuid.UUID(family), uuid.UUID(device)
    except ValueError:
        return None


def _derive(secret: bytes, purpose: str, family: uuid.UUID) -> str:
    return hmac.new(secret, f"{purpose}:{family.hex}".encode(), hashlib.sha256).hexdigest()


def api_key_for(secret: bytes, family: uuid.UUID) -> str:
    """The family's API_SERVER_KEY: what the control plane presents to that family's Hermes."""
    return _derive(secret, "api-server", family)


def identity_proof(api_key: str, nonce: str) -> str:
    """What a family's container answers at the sudo_chat plugin's /identity for `nonce`: proof
    that it holds the family's API key, without the key sent either way (the plugin computes
    the same, inside the container)."""
    return hmac.new(api_key.encode(), f"sudo-identity:{nonce}".encode(), "sha256").hexdigest()


def llm_key_for(secret: bytes, family: uuid.UUID) -> str:
    """The key a family's Hermes presents to the LLM gateway; it names the family it belongs to."""
    return f"sk-sudo-{family.hex}-{_derive(secret, 'llm-gateway', family)}"


def family_of_llm_key(secret: bytes, key: str) -> uuid.UUID | None:
    """The family a gateway key belongs to, or None when the key is not one we issued."""
    match = _LLM_KEY.match(key)
    if not match:
        return None
    family = uuid.UUID(hex=match.group(1))
    if not hmac.compare_digest(match.group(2), _derive(secret, "llm-gateway", family)):
        return None
    return family
