"""The host-wide settings the admin sets (LLM provider, Twilio, LiveKit): schema, checks, store.

Settings live in the database. The LLM gateway reads the provider's URL and key on every
request, so changing them changes every family's next answer with no container touched. The
model is also written into each container's config, so changing it makes every runtime stale
(sudo-api then starts the provisioner's restart-all). Shared by sudo-api's pages and /v1 and
by `sudoctl settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sudo_core.db import Database


class InvalidSetting(ValueError):
    pass


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise InvalidSetting("must be a URL such as https://host/path")
    return value.rstrip("/")


def _text(value: str) -> str:
    if len(value) > 500 or any(c in value for c in "\r\n\0"):
        raise InvalidSetting("must be one line of at most 500 characters")
    return value


def _phone(value: str) -> str:
    digits = value.removeprefix("whatsapp:")
    if not (digits.startswith("+") and digits[1:].isdigit() and 8 <= len(digits) <= 16):
        raise InvalidSetting("must be a number in E.164 form, such as +14155550100")
    return digits


@dataclass(frozen=True)
class Field:
    label: str
    check: Any = _text
    secret: bool = False
    """Write-only: shown as set or not, never sent back."""
    restart: bool = False
    """Containers carry it: changing it recreates every runtime."""


FIELDS: dict[str, Field] = {
    "llm.base_url": Field("LLM provider URL (OpenAI-compatible, ending in /v1)", _url),
    "llm.model": Field("Model", restart=True),
    "llm.api_key": Field("LLM API key", secret=True),
    "twilio.account_sid": Field("Twilio Account SID"),
    "twilio.auth_token": Field("Twilio Auth Token", secret=True),
    "twilio.whatsapp_from": Field("WhatsApp sender number", _phone),
    "twilio.api_base": Field("Twilio API URL (empty: https://api.twilio.com)", _url),
    "twilio.template_sid": Field("WhatsApp template for messages outside the 24-hour window (Content SID)"),
    "twilio.public_url": Field("This server's public address, for Twilio's status callbacks", _url),
    "stt.base_url": Field("Speech-to-text URL (OpenAI-compatible; empty: the LLM provider)", _url),
    "stt.model": Field("Speech-to-text model (empty: whisper-1)"),
    "stt.api_key": Field("Speech-to-text API key (empty: the LLM key)", secret=True),
    "tts.base_url": Field("Text-to-speech URL (OpenAI-compatible; empty: the LLM provider)", _url),
    "tts.model": Field("Text-to-speech model (empty: tts-1)"),
    "tts.api_key": Field("Text-to-speech API key (empty: the LLM key)", secret=True),
    "livekit.url": Field("LiveKit server URL", _url),
    "livekit.api_key": Field("LiveKit API key"),
    "livekit.api_secret": Field("LiveKit API secret", secret=True),
}


def current(db: Database) -> dict[str, Any]:
    """Every setting as the admin may see it: secrets only as whether they are set."""
    stored = db.get_settings("")
    return {
        key: ({"set": bool(stored.get(key))} if f.secret else stored.get(key, ""))
        for key, f in FIELDS.items()
    }


def validate(changes: dict[str, Any]) -> dict[str, str]:
    """All changes checked before any is stored: a bad one changes nothing."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise InvalidSetting(f"unknown setting(s): {', '.join(unknown)}")
    clean: dict[str, str] = {}
    for key, value in changes.items():
        if not isinstance(value, str):
            raise InvalidSetting(f"{key}: must be a string")
        value = value.strip()
        try:
            clean[key] = FIELDS[key].check(value) if value else ""
        except InvalidSetting as exc:
            raise InvalidSetting(f"{FIELDS[key].label}: {exc}") from None
    return clean


def store(db: Database, clean: dict[str, str]) -> list[str]:
    """Store validated changes; an empty secret keeps the stored one. Returns the keys changed."""
    stored = db.get_settings("")
    changed = []
    with db.transaction():
        for key, value in clean.items():
            if FIELDS[key].secret and not value:
                continue
            if stored.get(key, "") != value:
                db.set_setting(key, value)
                changed.append(key)
    return changed
