"""What Sudo's Hermes plugins share. Not a plugin itself: Hermes loads only the directories
holding a plugin.yaml, and each plugin puts this directory on its import path to import it.

Every plugin's listener takes requests with the family's API key only; each reads Hermes's runner
to know whether it is starting or stopping; each keeps a reply that names the family's own media
as words; and a message sent from a Hermes process other than
the gateway (a cron job run by `hermes cron run`) reaches the gateway's live adapter through its
`/deliver` endpoint, since the adapter owns the durable outbox or journal the message must go to.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web


def authorized(request: web.Request, key: str) -> bool:
    """Whether the request bears the family's API key."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme == "Bearer" and hmac.compare_digest(token.encode(), key.encode())


def own_media_as_words(extracted: tuple[list[str], str], content: str, media: Path) -> tuple[list[str], str]:
    """What an adapter's `extract_local_files` returns, given Hermes's own (`extracted`).

    Hermes sends a reply's paths to existing files as attachments, which neither the chat nor
    WhatsApp's adapter delivers ("Couldn't deliver the image attachment"). A photo or voice note
    the family sent, which the agent may name by its path under `media`, is in the family's
    thread already: the reply stays words.
    """
    files, text = extracted
    if any(Path(f).resolve().is_relative_to(media.resolve()) for f in files):
        return [], content
    return files, text


def runner_starting(adapter: Any) -> bool:
    """Whether the adapter's Hermes gateway is still restoring sessions from before its restart.

    Reads the runner behind the message handler (gateway.run.GatewayRunner, Hermes 0.19).
    """
    runner = getattr(adapter._message_handler, "__self__", None)
    return bool(getattr(runner, "_startup_restore_in_progress", False))


def runner_stopping(adapter: Any) -> bool:
    """Whether the adapter's Hermes gateway is draining to stop (SIGTERM: recreated, evicted,
    restarted)."""
    runner = getattr(adapter._message_handler, "__self__", None)
    return bool(getattr(runner, "_draining", False) or getattr(runner, "_external_drain_active", False))


async def deliver(plugin: str, port: int, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """Hand a message to `plugin`'s live adapter in the gateway (its listener on this container's
    loopback), in the shape Hermes wants of a send: {"success", "message_id"} or {"error"}."""
    url = f"http://127.0.0.1:{port}/deliver"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.post(url, json=body, headers=headers) as resp,
        ):
            answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"the gateway's {plugin} listener did not take the message: {exc}"}
    if resp.status != 200:
        return {"error": f"{plugin} refused the message: {answer}"}
    return {"success": True, "message_id": answer["message_id"]}
