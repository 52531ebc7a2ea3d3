"""sudo_voice: what the family's agent says out loud at home, as a Hermes platform.

Runs inside the family's container (Hermes's own Python). Outbound only: the family's voice
conversations reach the agent through its api_server (the voice bridge), so nothing comes in
here. A message sent to this platform (a cron job delivering to `sudo_voice`, whose chat is the
home channel "home") goes to the sudo_chat plugin's `/deliver` marked `speak`, into its fsynced
outbox on the family's volume, the one durable way from the container to sudo-api; sudo-api reads
it there with everything else the agent says first, and has the family's home devices that are
online say it (see sudo_api.announcements). This plugin keeps no state of its own: what it hands
over is on the volume before the send returns, and a send that fails is reported to Hermes.

The gateway's live adapter and a `hermes cron run` process in the container send the same way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from gateway.config import Platform
from gateway.platforms.base import BasePlatformAdapter, SendResult

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the plugins' shared module, beside them
import sudo_plugins

logger = logging.getLogger(__name__)

NAME = "sudo_voice"
OUTBOX = "sudo_chat"
"""The plugin whose outbox carries what this one is given to say."""


async def _speak(config: Any, chat_id: str, text: str) -> dict[str, Any]:
    """Hand `text` to sudo_chat's outbox, to be said on the family's home devices."""
    extra = config.extra or {}
    body = {"text": text, "chat": chat_id, "speak": True}
    port, key = int(extra.get("chat_port", 8643)), str(extra.get("key", ""))
    return await sudo_plugins.deliver(OUTBOX, port, key, body)


class SudoVoiceAdapter(BasePlatformAdapter):
    def __init__(self, config: Any) -> None:
        super().__init__(config, Platform(NAME))
        self._config = config

    async def connect(self, *, is_reconnect: bool = False) -> bool:
        if len(str((self._config.extra or {}).get("key", ""))) < 16:
            self._set_fatal_error("sudo_voice_no_key", "sudo_voice needs extra.key", retryable=False)
            return False
        self._mark_connected()
        return True

    async def disconnect(self) -> None:
        self._mark_disconnected()

    async def send(
        self, chat_id: str, content: str, reply_to: str | None = None, metadata: Any = None
    ) -> SendResult:
        result = await _speak(self._config, chat_id, content)
        if "error" in result:
            logger.warning("[%s] not handed over: %s", NAME, result["error"])
            return SendResult(success=False, error=result["error"])
        return SendResult(success=True, message_id=result["message_id"])

    async def get_chat_info(self, chat_id: str) -> dict[str, Any]:
        return {"name": "The family's home devices", "type": "dm", "chat_id": chat_id}


def _check() -> bool:
    return True


async def _send_from_elsewhere(config: Any, chat_id: str, text: str, **_: Any) -> dict[str, Any]:
    """Delivery from a Hermes process other than the gateway (a cron job run by `hermes cron
    run`): the same hand-over as the gateway's adapter makes."""
    return await _speak(config, chat_id, text)


def register(ctx: Any) -> None:
    ctx.register_platform(
        name=NAME,
        label="Home devices (spoken)",
        adapter_factory=lambda config: SudoVoiceAdapter(config),
        check_fn=_check,
        cron_deliver_env_var="SUDO_VOICE_HOME_CHANNEL",
        standalone_sender_fn=_send_from_elsewhere,
        platform_hint=(
            "What you send here is said out loud by the family's home speakers, to whoever is at "
            "home: a few short spoken sentences of plain words, no markdown, lists, links or emoji."
        ),
        emoji="🔊",
    )
