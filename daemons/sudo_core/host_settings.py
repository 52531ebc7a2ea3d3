"""The host-wide settings the admin sets (LLM provider, Twilio, LiveKit): schema, checks, store.

Settings live in the database. The LLM gateway reads the provider's URL and key on every
request, so changing them changes every family's next answer with no container touched. The
model is also written into each container's config, so changing it makes every runtime stale
(sudo-api then starts the provisioner's restart-all). Shared by sudo-api's pages and /v1 and
by `sudoctl settings`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sudo_core.db import Database


class InvalidSetting(ValueError):
    pass


def _url(value: str, allow_http: bool = False) -> str:
    """A provider's address: https (wss), since its secret goes along; plain http (ws) only to
    this host itself, or anywhere with `api.allow_http_urls`. Nothing that could carry or hide
    another destination: no user:password@, no ?query, no #fragment."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError:
        raise InvalidSetting("must be a URL such as https://host/path") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise InvalidSetting("must be a URL such as https://host/path")
    if parts.username is not None or parts.password is not None:
        raise InvalidSetting(
            "must not hold a user name or password (user:password@): use the key's own field"
        )
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise InvalidSetting("must not have a ?query or #fragment")
    if parts.scheme in ("http", "ws") and not (allow_http or is_loopback(parts.hostname)):
        raise InvalidSetting(
            f"must use {'https' if parts.scheme == 'http' else 'wss'}: its secret would cross the network"
            " in the clear (plain http is for this host itself, or set api.allow_http_urls)"
        )
    return value.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs name the same server (scheme, host, port): where a secret may follow."""
    one, two = urlsplit(a), urlsplit(b)
    return (one.scheme, one.hostname, one.port) == (two.scheme, two.hostname, two.port)


def _text(value: str) -> str:
    if len(value) > 500 or any(c in value for c in "\r\n\0"):
        raise InvalidSetting("must be one line of at most 500 characters")
    return value


def _count(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise InvalidSetting("must be a whole number above 0 (empty: no limit)")
    return str(int(value))


def _phone(value: str) -> str:
    digits = value.removeprefix("whatsapp:")
    if not (digits.startswith("+") and digits[1:].isdigit() and 8 <= len(digits) <= 16):
        raise InvalidSetting("must be a number in E.164 form, such as +14155550100")
    return digits


@dataclass(frozen=True)
class Field:
    label: str
    check: Any = _text
    url: bool = False
    """A provider's address (checked by `_url`)."""
    secret: bool = False
    """Write-only: shown as set or not, never sent back."""
    restart: bool = False
    """Containers carry it: changing it recreates every runtime."""


FIELDS: dict[str, Field] = {
    "llm.base_url": Field("LLM provider URL (OpenAI-compatible, ending in /v1)", url=True),
    "llm.model": Field("Model", restart=True),
    "llm.api_key": Field("LLM API key", secret=True),
    "llm.daily_tokens": Field("Daily tokens per family, in and out (empty: no limit)", _count),
    "twilio.account_sid": Field("Twilio Account SID"),
    "twilio.auth_token": Field("Twilio Auth Token", secret=True),
    "twilio.whatsapp_from": Field("WhatsApp sender number", _phone),
    "twilio.api_base": Field("Twilio API URL (empty: https://api.twilio.com)", url=True),
    "twilio.template_sid": Field("WhatsApp template for messages outside the 24-hour window (Content SID)"),
    "twilio.public_url": Field("This server's public address, for Twilio's status callbacks", url=True),
    "stt.base_url": Field("Speech-to-text URL (OpenAI-compatible; empty: the LLM provider)", url=True),
    "stt.model": Field("Speech-to-text model (empty: whisper-1)"),
    "stt.api_key": Field("Speech-to-text API key (empty: the LLM key)", secret=True),
    "tts.base_url": Field("Text-to-speech URL (OpenAI-compatible; empty: the LLM provider)", url=True),
    "tts.model": Field("Text-to-speech model (empty: tts-1)"),
    "tts.api_key": Field("Text-to-speech API key (empty: the LLM key)", secret=True),
    "livekit.url": Field("LiveKit server URL", url=True),
    "livekit.api_key": Field("LiveKit API key"),
    "livekit.api_secret": Field("LiveKit API secret", secret=True),
}
SECRET_OF_URL = {
    "llm.base_url": "llm.api_key",
    "stt.base_url": "stt.api_key",
    "tts.base_url": "tts.api_key",
    "twilio.api_base": "twilio.auth_token",
    "livekit.url": "livekit.api_secret",
}
"""The secret that goes to each address. A new address without its secret entered again in the
same save clears the secret: an admin session (or a stolen one) cannot point the address at
its own server and receive the key there."""


def current(db: Database) -> dict[str, Any]:
    """Every setting as the admin may see it: secrets only as whether they are set."""
    stored = db.get_settings("")
    return {
        key: ({"set": bool(stored.get(key))} if f.secret else stored.get(key, ""))
        for key, f in FIELDS.items()
    }


def validate(changes: dict[str, Any], allow_http: bool = False) -> dict[str, str]:
    """All changes checked before any is stored: a bad one changes nothing. `allow_http`:
    `api.allow_http_urls`, plain http to providers beyond this host."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise InvalidSetting(f"unknown setting(s): {', '.join(unknown)}")
    clean: dict[str, str] = {}
    for key, value in changes.items():
        if not isinstance(value, str):
            raise InvalidSetting(f"{key}: must be a string")
        value = value.strip()
        field = FIELDS[key]
        try:
            clean[key] = "" if not value else _url(value, allow_http) if field.url else field.check(value)
        except InvalidSetting as exc:
            raise InvalidSetting(f"{FIELDS[key].label}: {exc}") from None
    return clean


def store(db: Database, clean: dict[str, str]) -> list[str]:
    """Store validated changes; an empty secret keeps the stored one, unless its address
    changed (`SECRET_OF_URL`): then it is cleared. Returns the keys changed (cleared ones too)."""
    changed = []
    with db.transaction():
        stored = db.get_settings("")
        for url, secret in SECRET_OF_URL.items():
            moved = url in clean and clean[url] != stored.get(url, "")
            if moved and not clean.get(secret) and stored.get(secret):
                db.set_setting(secret, "")
                changed.append(secret)
        for key, value in clean.items():
            if FIELDS[key].secret and not value:
                continue
            if stored.get(key, "") != value:
                db.set_setting(key, value)
                changed.append(key)
    return changed


def cleared(changed: list[str], clean: dict[str, str]) -> list[str]:
    """The secrets a save cleared (their address changed without them): to tell the admin."""
    return [key for key in changed if FIELDS[key].secret and not clean.get(key)]
