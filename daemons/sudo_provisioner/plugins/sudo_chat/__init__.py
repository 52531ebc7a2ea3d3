"""sudo_chat: the family's web chat as a Hermes platform.

Runs inside the family's container (Hermes's own Python). sudo-api, on the host, is the
only client; it authenticates with the family's API key. Each member has their own thread:
its chat id is the member's account id, so Hermes keeps a session per member, and `sender`
says who speaks (name and role). Protocol:

    POST /messages            {"id", "text", "chat", "sender", "media"?}  -> 202 accepted
                                  | 200 duplicate | 503 starting or stopping (try again)
                                  `media`: the type of the file put for this id (text may be "")
    PUT  /media/<id>          the body is a message's photo or voice note, Content-Type its
                              type -> 201; kept on the family's volume (media/<id>.<ext>)
    GET  /media/<id>          that file back, for its sender's history -> 200 | 404
    POST /deliver             {"text", "chat"?, "speak"?}  a proactive message from another Hermes
                                        process in the container (`hermes cron run`), through the
                                        live adapter; `speak`: the sudo_voice plugin's, for the
                                        family's home devices to say out loud (its chat is "home")
    GET  /identity?nonce=<hex>  {"proof": HMAC-SHA256(key, "sudo-identity:" + nonce)}, no key
                                        sent: the voice bridge checks that an address answers for
                                        the family it expects before it sends that family's words
    GET  /events?after=<seq>  NDJSON, never ends:
        {"type": "hello", "boot", "seq"}                first line: this process and its last seq
        {"seq", "type": "message", "id", "reply_to", "chat", "text", "at", "speak"?}   durable
        {"seq", "type": "edit", "id", "text"}                        durable
        {"seq", "type": "turn_done", "reply_to", "outcome"}          durable
        {"type": "turn_started" | "draft", "reply_to", "text"?}      live only
        {"type": "ping"}                                             every 15 s

Durable events go to an append-only outbox on the family's volume before anyone sees them,
so a reply or a cron message written while sudo-api is down is read when it reconnects
(`after` is the last seq it stored). It is the one durable way out of the container to sudo-api:
what the agent says out loud (sudo_voice) goes through it too, marked `speak`. A message id is
handled once per process; after a restart sudo-api delivers again whatever got no `turn_done`,
which is what makes a reply that died with the container come back rather than vanish.

Stopping (SIGTERM), Hermes answers a message handed to it with "not accepting new work": so
none is handed over once the stop began, and no reply of a turn is written during the stop.
That turn gets no `turn_done`, and the next process answers its message under the same ids.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from gateway.config import Platform
from gateway.platforms.base import BasePlatformAdapter, MessageEvent, MessageType, SendResult

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the plugins' shared module, beside them
import sudo_plugins

logger = logging.getLogger(__name__)

NAME = "sudo_chat"
TURN_END_SEC = 10.0
"""Longest a message waits for the previous turn's cleanup before it is handed over anyway."""
CHAT_ID = "family"
"""The chat of a message that names none (the home channel: sudo-api puts it in the owner's thread)."""
PING_SEC = 15.0
COMPACT_AFTER = 500
"""Entries sudo-api has acknowledged before the outbox file is rewritten without them."""
MAX_TEXT = 32_000
MEDIA_MAX = 16 * 1024 * 1024
"""sudo-api's limit for a file (sudo_api/media.py)."""
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "audio/ogg": ".ogg",
    "audio/webm": ".webm",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
}
"""The file name Hermes reads a type from: its speech-to-text takes a voice note by extension."""
MEDIA_ID = re.compile(r"[0-9a-f]{32}")
"""sudo-api's message ids, the files' names."""
AGENT_MODULES = ("run_agent", "model_tools", "openai")
"""Hermes's agent, its tool registry and its LLM client, imported by its first turn (Hermes 0.19)."""


class Outbox:
    """Append-only JSON lines, fsynced: the agent's side of the conversation until read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, Any]] = []
        self.seq = 0
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash mid-write: never acknowledged to anyone
                self.seq = max(self.seq, entry["seq"])
                if entry["type"] != "mark":
                    self.entries.append(entry)
        self.answered = {e["reply_to"] for e in self.entries if e["type"] == "turn_done"}

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        entry = {"seq": self.seq, **entry}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)
        if entry["type"] == "turn_done":
            self.answered.add(entry["reply_to"])
        return entry

    def since(self, after: int) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["seq"] > after]

    def acknowledge(self, upto: int) -> None:
        """Drop what the reader has stored, once enough has piled up to be worth a rewrite."""
        if sum(1 for e in self.entries if e["seq"] <= upto) < COMPACT_AFTER:
            return
        keep = self.since(upto)
        lines = [json.dumps(e) for e in keep] or [json.dumps({"seq": self.seq, "type": "mark"})]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)
        self.entries = keep


def _load_agent_modules() -> None:
    """Import what Hermes imports at its first turn (the agent, its tools), while nobody waits:
    a family's first message after a warm-up would otherwise pay for it (half a second of CPU)."""
    started = time.process_time()
    for module in AGENT_MODULES:
        try:
            importlib.import_module(module)
        except Exception:  # another Hermes may lay them out otherwise: its first turn imports them
            logger.warning("[sudo_chat] could not load %s ahead of the first turn", module, exc_info=True)
    logger.info("[sudo_chat] agent modules loaded in %.2f s of CPU", time.process_time() - started)


class SudoChatAdapter(BasePlatformAdapter):
    def __init__(self, config: Any) -> None:
        super().__init__(config, Platform(NAME))
        extra = config.extra or {}
        self._host = extra.get("host", "0.0.0.0")
        self._port = int(extra.get("port", 8643))
        self._key = str(extra.get("key", ""))
        home = Path(os.environ.get("HERMES_HOME", "/opt/data"))
        self._outbox = Outbox(home / NAME / "outbox.jsonl")
        self._media = home / NAME / "media"
        self._outbox_lock = asyncio.Lock()
        self._boot = uuid.uuid4().hex
        self._seen: set[str] = set()
        self._replied: dict[str, int] = {}
        """Per message being answered, how many replies its turn has written so far."""
        self._last_turn: asyncio.Task[Any] | None = None
        """The task of the turn that last ended (on_processing_complete runs in it)."""
        self._turn: str | None = None
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._runner: web.AppRunner | None = None

    # Hermes's side

    @property
    def authorization_is_upstream(self) -> bool:
        return True  # sudo-api authenticated the family member before the message got here

    def supports_draft_streaming(self, chat_type: str | None = None, metadata: Any = None) -> bool:
        return True

    async def connect(self, *, is_reconnect: bool = False) -> bool:
        if len(self._key) < 16:
            self._set_fatal_error("sudo_chat_no_key", "sudo_chat needs extra.key", retryable=False)
            return False
        app = web.Application(client_max_size=MEDIA_MAX + 64 * 1024)
        app.router.add_post("/messages", self._post_message)
        app.router.add_put("/media/{id}", self._put_media)
        app.router.add_get("/media/{id}", self._get_media)
        app.router.add_get("/events", self._events)
        app.router.add_post("/deliver", self._deliver)
        app.router.add_get("/identity", self._identity)
        app.router.add_get("/health", lambda _: web.json_response({"status": "ok"}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._mark_connected()
        logger.info("[sudo_chat] listening on %s:%d (boot %s)", self._host, self._port, self._boot)
        threading.Thread(target=_load_agent_modules, name="sudo_chat-preload", daemon=True).start()
        return True

    async def disconnect(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._mark_disconnected()

    async def send(
        self, chat_id: str, content: str, reply_to: str | None = None, metadata: Any = None
    ) -> SendResult:
        if self._turn and sudo_plugins.runner_stopping(self):
            # Stopping, Hermes answers a message handed over as the stop began with "not
            # accepting new work", so no reply of a turn is written during the stop. The turn
            # then gets no turn_done (see on_processing_complete) and sudo-api delivers its
            # message to the next process. One that finished just as the stop began is run
            # again, under the same ids: one answer still.
            self._replied.pop(self._turn, None)
            logger.info("[sudo_chat] reply to %s held back by the stop; it is delivered again", self._turn)
            return SendResult(success=False, error="the agent is stopping; its next process answers")
        return SendResult(success=True, message_id=await self._record_message(content, self._turn, chat_id))

    async def _record_message(self, text: str, reply_to: str | None, chat: str, speak: bool = False) -> str:
        """A reply's id is its message's id and its place in the turn: a turn answered again
        by the next agent process (this one was killed after replying, before its turn_done)
        writes the same ids, which sudo-api already has, so the family never sees it twice."""
        if reply_to:
            n = self._replied.get(reply_to, 0)
            self._replied[reply_to] = n + 1
            message_id = f"{reply_to}.{n}"
        else:
            message_id = uuid.uuid4().hex
        entry = {"type": "message", "id": message_id, "reply_to": reply_to, "chat": chat, "text": text}
        await self._record(entry | {"at": time.time()} | ({"speak": True} if speak else {}))
        return message_id

    async def edit_message(
        self, chat_id: str, message_id: str, content: str, *, finalize: bool = False
    ) -> SendResult:
        await self._record({"type": "edit", "id": message_id, "text": content})
        return SendResult(success=True, message_id=message_id)

    async def send_draft(self, chat_id: str, draft_id: int, content: str, metadata: Any = None) -> SendResult:
        self._publish({"type": "draft", "reply_to": self._turn, "text": content})
        return SendResult(success=True)

    async def get_chat_info(self, chat_id: str) -> dict[str, Any]:
        return {"name": "Sudo chat", "type": "dm", "chat_id": chat_id}

    def extract_local_files(self, content: str) -> tuple[list[str], str]:
        return sudo_plugins.own_media_as_words(super().extract_local_files(content), content, self._media)

    async def on_processing_start(self, event: MessageEvent) -> None:
        self._turn = event.message_id
        self._publish({"type": "turn_started", "reply_to": event.message_id})

    async def on_processing_complete(self, event: MessageEvent, outcome: Any) -> None:
        if sudo_plugins.runner_stopping(self) and event.message_id not in self._replied:
            # Cut off by the stop (Hermes interrupts a turn in progress at once, and calls that a
            # success): no turn_done, so sudo-api hands the message to the next agent process.
            logger.info("[sudo_chat] turn of %s cut off by the stop; it is delivered again", event.message_id)
        else:
            await self._record(
                {
                    "type": "turn_done",
                    "reply_to": event.message_id,
                    "outcome": getattr(outcome, "value", outcome),
                }
            )
        self._replied.pop(event.message_id, None)
        if self._turn == event.message_id:
            self._turn = None
        self._last_turn = asyncio.current_task()

    # sudo-api's side

    async def _identity(self, request: web.Request) -> web.Response:
        """Prove which family this is without saying its key (as sudo_core.families.identity_proof)."""
        nonce = request.query.get("nonce", "")
        if not 16 <= len(nonce) <= 128:
            return web.json_response({"error": "nonce: 16 to 128 characters"}, status=400)
        proof = hmac.new(self._key.encode(), f"sudo-identity:{nonce}".encode(), "sha256").hexdigest()
        return web.json_response({"proof": proof})

    async def _post_message(self, request: web.Request) -> web.Response:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            message_id, text, media = str(body["id"]), str(body["text"]), body.get("media")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with id and text"}, status=400)
        path = self._media_path(message_id, media) if media else None
        if media and (path is None or not path.is_file()):
            return web.json_response({"error": "no file of that type was put for this message"}, status=400)
        if not (text.strip() or path) or len(text) > MAX_TEXT:
            return web.json_response(
                {"error": f"text must be 1 to {MAX_TEXT} characters, or a file come with it"}, status=400
            )
        if self._last_turn is not None and not self._last_turn.done():
            # sudo-api sends the next message on turn_done, which this hook writes before Hermes
            # frees the session: handed over in between, Hermes takes the message for an
            # interruption of a turn that is over, and never answers it. Wait for the turn to end.
            await asyncio.wait({self._last_turn}, timeout=TURN_END_SEC)
        if sudo_plugins.runner_starting(self) or sudo_plugins.runner_stopping(self):
            # Starting, Hermes would queue it and report the turn finished before it ran;
            # stopping, it would answer "not accepting new work": refuse instead, and sudo-api
            # delivers again in a moment (to the next agent process, if this one is going).
            # Checked after the wait, since a stop can begin during it.
            return web.json_response({"error": "the agent is starting or stopping"}, status=503)
        if message_id in self._seen or message_id in self._outbox.answered:
            return web.json_response({"status": "duplicate", "boot": self._boot})
        self._seen.add(message_id)
        chat, sender = str(body.get("chat") or CHAT_ID), str(body.get("sender") or "someone in the family")
        source = self.build_source(
            chat_id=chat, chat_name=sender, chat_type="dm", user_id=chat, user_name=sender
        )
        kind = MessageType.TEXT  # a photo goes to the model as pixels, a voice note to speech-to-text
        if media:
            kind = MessageType.PHOTO if media.startswith("image/") else MessageType.VOICE
        event = MessageEvent(
            text=text,
            message_type=kind,
            source=source,
            raw_message=body,
            message_id=message_id,
            media_urls=[str(path)] if path else [],
            media_types=[str(media)] if path else [],
        )
        try:
            await self.handle_message(event)
        except BaseException:
            self._seen.discard(message_id)  # not taken: the next hand-over must not be a duplicate
            raise
        return web.json_response({"status": "accepted", "boot": self._boot}, status=202)

    def _media_path(self, message_id: str, kind: Any) -> Path | None:
        """Where a message's file of this type is kept; None for an id or a type not ours."""
        if not MEDIA_ID.fullmatch(message_id) or kind not in EXTENSIONS:
            return None
        return self._media / f"{message_id}{EXTENSIONS[kind]}"

    async def _put_media(self, request: web.Request) -> web.Response:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        path = self._media_path(request.match_info["id"], request.content_type)
        if path is None:
            return web.json_response({"error": "a message id and a photo's or voice note's type"}, status=400)
        data = await request.read()
        if not data:
            return web.json_response({"error": "the file is empty"}, status=400)
        await asyncio.to_thread(_write_file, path, data)
        return web.json_response({"bytes": len(data)}, status=201)

    async def _get_media(self, request: web.Request) -> web.StreamResponse:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        message_id = request.match_info["id"]
        found = MEDIA_ID.fullmatch(message_id) and next(self._media.glob(f"{message_id}.*"), None)
        if not found:
            return web.json_response({"error": "no file for this message"}, status=404)
        return web.FileResponse(found)

    async def _deliver(self, request: web.Request) -> web.Response:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            text, chat, speak = str(body["text"]), str(body.get("chat") or CHAT_ID), body.get("speak", False)
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": "expected JSON with text"}, status=400)
        if not text.strip() or len(text) > MAX_TEXT or not isinstance(speak, bool):
            return web.json_response(
                {"error": f"text must be 1 to {MAX_TEXT} characters, speak true or false"}, status=400
            )
        return web.json_response({"message_id": await self._record_message(text, None, chat, speak)})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after must be an integer"}, status=400)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            await self._write(response, {"type": "hello", "boot": self._boot, "seq": self._outbox.seq})
            replayed = min(after, self._outbox.seq)  # a reader ahead of us still gets what comes
            for entry in self._outbox.since(after):
                await self._write(response, entry)
                replayed = entry["seq"]
            async with self._outbox_lock:
                await asyncio.to_thread(self._outbox.acknowledge, after)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), PING_SEC)
                except TimeoutError:
                    event = {"type": "ping"}
                if event.get("seq", replayed + 1) > replayed:
                    await self._write(response, event)
        except ConnectionResetError:  # sudo-api went (restarted, reconnecting): it reads again
            return response
        finally:
            self._listeners.discard(queue)

    @staticmethod
    async def _write(response: web.StreamResponse, event: dict[str, Any]) -> None:
        await response.write(json.dumps(event).encode() + b"\n")

    async def _record(self, entry: dict[str, Any]) -> None:
        async with self._outbox_lock:
            self._publish(await asyncio.to_thread(self._outbox.append, entry))

    def _publish(self, event: dict[str, Any]) -> None:
        for queue in self._listeners:
            queue.put_nowait(event)


def _write_file(path: Path, data: bytes) -> None:
    """Written whole and fsynced before sudo-api stores the message that names it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # never taken for the file by GET /media
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check() -> bool:
    return True


async def _send_from_elsewhere(config: Any, chat_id: str, text: str, **_: Any) -> dict[str, Any]:
    """Delivery from a Hermes process other than the gateway (a cron job run by `hermes cron
    run`): hand the message to the gateway's live adapter, which owns the outbox."""
    extra = config.extra or {}
    body = {"text": text, "chat": chat_id}
    return await sudo_plugins.deliver(NAME, int(extra.get("port", 8643)), str(extra.get("key", "")), body)


def register(ctx: Any) -> None:
    ctx.register_platform(
        name=NAME,
        label="Sudo web chat",
        adapter_factory=lambda config: SudoChatAdapter(config),
        check_fn=_check,
        allow_all_env="SUDO_CHAT_ALLOW_ALL_USERS",
        cron_deliver_env_var="SUDO_CHAT_HOME_CHANNEL",
        standalone_sender_fn=_send_from_elsewhere,
        platform_hint=(
            "You are talking with one member of the family in their own thread of Sudo's web chat; "
            "the user label gives their name and, in brackets, their role. Markdown renders; keep "
            "answers conversational."
        ),
        emoji="💬",
    )
