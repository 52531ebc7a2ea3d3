"""sudo-voice-bridge: the livekit-agents worker that gives each family's room its agent's voice."""

from __future__ import annotations

import asyncio
import sys

from sudo_core import config, logs
from sudo_core.credentials import SERVICE_TOKEN, read_credential
from sudo_core.metrics import start_metrics
from sudo_core.systemd import Notifier

from .worker import VoiceBridge


async def serve(settings: config.Settings) -> int:
    notifier = Notifier()
    token = read_credential(SERVICE_TOKEN, settings.core.state_dir, generate=True)
    assert token is not None
    metrics = await start_metrics(settings.voice.metrics) if settings.voice.metrics else None
    bridge = VoiceBridge(settings, token, notifier.status)
    async with notifier.serving(f"starting; sudo-api at {settings.voice.api_url}") as stop:
        await bridge.run(stop)
    if metrics is not None:
        await metrics.cleanup()
    return 0


def main() -> None:
    settings = config.load_or_exit("sudo-voice-bridge")
    logs.setup("sudo-voice-bridge", settings.core.log_level)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
