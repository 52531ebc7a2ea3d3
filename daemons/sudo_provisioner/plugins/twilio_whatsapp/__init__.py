"""twilio_whatsapp: the family's WhatsApp numbers as a Hermes platform.

Runs inside the family's container (Hermes's own Python). Each linked phone number is its own
chat and session, as in upstream's Twilio SMS adapter; the agent's memory is the family's.

Inbound: sudo-api validates Twilio's webhook, keeps the message in its inbox, and hands it here
(authenticated with the family's API key):

    POST /inbound  {"id": MessageSid, "from": "+E164", "name", "text",
                    "media": [{"type": "image/jpeg", "data": base64}]}
                   -> 202 accepted | 200 duplicate | 503 starting or stopping (try again)
    POST /deliver  {"chat_id": "+E164", "text"}  a proactive message from another Hermes
                   process in the container (`hermes cron run`), through the live adapter

Outbound: replies are converted to WhatsApp's formatting, split at Twilio's 1,600 characters,
and sent one by one to the Sudo gateway on the host (`POST /v1/whatsapp/messages`, with the
family's gateway key), which holds the Twilio account, applies WhatsApp's 24-hour window and
records every message. 429, 5xx and unreachable are retried with backoff; other refusals are
final (the gateway shows them to the admin).

Both directions go through an fsynced journal on the family's volume first. A message the
agent accepted but never finished (the container died) is handed to Hermes again at the next
start, up to REPLAYS times; a reply written but not yet taken by the gateway is sent after a
restart, under the same id, so the gateway sends it once.

A stop (SIGTERM: recreated, evicted, the engine restarting) cuts the turn in progress, and two
things Hermes does then must not reach the family:
- Stopping, Hermes answers any message handed to it with "not accepting new work". So nothing
  is handed over once the stop began, and no reply of a turn is sent during the stop: the
  message stays owed, and the next process answers it under the same reply ids.
- Hermes's session keeps the words of the cut turn, unanswered, and merges them into the next
  turn it runs. So the next process hands its predecessor's messages over before any new one
  of the same number: the cut words are answered once, by their own replay, never again as
  part of a newer message's answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import logging
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from gateway.config import Platform
from gateway.platforms.base import BasePlatformAdapter, MessageEvent, MessageType, SendResult
from gateway.platforms.whatsapp_common import WhatsAppBehaviorMixin

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the plugins' shared module, beside them
import sudo_plugins

logger = logging.getLogger(__name__)

NAME = "twilio_whatsapp"
BODY_MAX = 1600
"""Twilio's limit for one WhatsApp message body (characters)."""
MAX_TEXT = 4096
MAX_MEDIA = 10
MAX_REQUEST = 24 * 1024 * 1024
"""sudo-api sends media up to 16 MiB, base64-encoded."""
REPLAYS = 3
"""Times a message is handed to Hermes in all before it is answered with an apology."""
START_WAIT_SEC = 300.0
"""Longest the first hand-over waits for Hermes to finish starting."""
TURN_WAIT_SEC = 900.0
"""A turn Hermes never reports finished holds its number's next message no longer than this."""
SEEN_KEEP = 1000
COMPACT_AFTER = 2000
MEDIA_KEEP_SEC = 30 * 86400
RETRYABLE = {429, 500, 502, 503, 504}
# sudo_core.twilio.E164, copied: sudo_core is not installed in the family's Hermes container.
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "audio/ogg": ".ogg",  # WhatsApp's voice notes (Opus); mimetypes would say .oga, which Hermes refuses
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
}
APOLOGY = "Sorry, I could not finish answering your last message. Please send it again."


class _Formatting(WhatsAppBehaviorMixin):
    """Upstream's markdown-to-WhatsApp conversion, without the rest of its adapters."""


FORMATTING = _Formatting()


class Journal:
    """Append-only JSON lines, fsynced: every message this adapter still owes someone.

    {"type": "in", "id", "from", "name", "text", "media"}  accepted, not yet answered
    {"type": "retry" | "done", "id"}                     handed to Hermes again | answered
    {"type": "out", "id", "to", "text"}                  to send
    {"type": "sent", "id", "result"}                     taken by the gateway, or refused for good
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.inbound: dict[str, dict[str, Any]] = {}
        self.outbound: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, None] = {}
        self.lines = 0
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError):
                    continue  # a line cut short by a crash mid-write: never acknowledged to anyone
            self._compact()

    def knows(self, message_id: str) -> bool:
        return message_id in self.inbound or message_id in self.seen

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(entry)
        if self.lines > COMPACT_AFTER:
            self._compact()
        return entry

    def _apply(self, entry: dict[str, Any]) -> None:
        kind, message_id = entry["type"], entry["id"]
        self.lines += 1
        if kind == "in":
            self.inbound[message_id] = {**entry, "tries": 1}
        elif kind == "retry" and message_id in self.inbound:
            self.inbound[message_id]["tries"] += 1
        elif kind in ("done", "seen"):
            self.inbound.pop(message_id, None)
            self.seen[message_id] = None
            if len(self.seen) > SEEN_KEEP:
                del self.seen[next(iter(self.seen))]
        elif kind == "out":
            self.outbound[message_id] = entry
        elif kind == "sent":
            self.outbound.pop(message_id, None)

    def _compact(self) -> None:
        """Rewrite the file with only what is still owed and the ids recently answered."""
        lines = [{"type": "seen", "id": i} for i in self.seen]
        for entry in self.inbound.values():
            lines.append({k: v for k, v in entry.items() if k != "tries"})
            lines += [{"type": "retry", "id": entry["id"]}] * (entry["tries"] - 1)
        lines += self.outbound.values()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write("".join(json.dumps(e) + "\n" for e in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.lines = len(lines)


class TwilioWhatsAppAdapter(BasePlatformAdapter):
    SUPPORTS_MESSAGE_EDITING = False
    MAX_MESSAGE_LENGTH = BODY_MAX

    def __init__(self, config: Any) -> None:
        super().__init__(config, Platform(NAME))
        extra = config.extra or {}
        self._host = extra.get("host", "0.0.0.0")
        self._port = int(extra.get("port", 8644))
        self._key = str(extra.get("key", ""))
        self._gateway = str(extra.get("gateway", "")).rstrip("/")
        self._gateway_key = str(extra.get("gateway_key", ""))
        home = Path(os.environ.get("HERMES_HOME", "/opt/data")) / NAME
        self._media = home / "media"
        self._journal = Journal(home / "journal.jsonl")
        self._lock = asyncio.Lock()
        self._outbound_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting: dict[str, collections.deque[dict[str, Any]]] = {}
        """Per number, the accepted messages not yet handed to Hermes, in order."""
        self._turns: dict[str, asyncio.Task[None]] = {}
        self._current: dict[str, str] = {}
        """Per number, the id of the message Hermes is answering."""
        self._replied: dict[str, int] = {}
        """Per message being answered, how many parts its turn has sent so far."""
        self._turn_ends: dict[str, asyncio.Future[asyncio.Task[Any] | None]] = {}
        """Per message id handed over, the task of Hermes's turn, once it reports the turn done."""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # Hermes's side

    @property
    def authorization_is_upstream(self) -> bool:
        return True  # sudo-api let through only numbers the family linked

    async def connect(self, *, is_reconnect: bool = False) -> bool:
        if len(self._key) < 16 or not self._gateway or not self._gateway_key:
            self._set_fatal_error(
                "twilio_whatsapp_config",
                "twilio_whatsapp needs extra.key, gateway and gateway_key",
                retryable=False,
            )
            return False
        app = web.Application(client_max_size=MAX_REQUEST)
        app.router.add_post("/inbound", self._post_inbound)
        app.router.add_post("/deliver", self._post_deliver)
        app.router.add_get("/health", lambda _: web.json_response({"status": "ok"}))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_connect=10))
        self._tasks = [asyncio.create_task(self._send_loop())]
        await self._resume()  # first in their numbers' queues, before anything new can arrive
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._mark_connected()
        logger.info("[%s] listening on %s:%d", NAME, self._host, self._port)
        return True

    async def disconnect(self) -> None:
        tasks = [*self._tasks, *self._turns.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
        self._mark_disconnected()

    def format_message(self, content: str) -> str:
        return FORMATTING.format_message(content)

    async def send(
        self, chat_id: str, content: str, reply_to: str | None = None, metadata: Any = None
    ) -> SendResult:
        """Journal the message's parts for the send loop. A reply's id is the id of the message it
        answers and its place in the turn: a turn answered again after a restart (this process
        was killed after sending, before its done) sends the same ids, which the gateway has
        already sent, so the family never gets the answer twice."""
        turn = self._current.get(chat_id)
        if turn and sudo_plugins.runner_stopping(self):
            # Stopping, Hermes answers a message handed over as the stop began with "not
            # accepting new work", so no reply of a turn leaves during the stop. The turn is then
            # not done (see on_processing_complete) and the next process answers it, under the
            # same ids. One that finished just as the stop began is run again: one answer still.
            self._replied.pop(turn, None)
            logger.info("[%s] reply to %s held back by the stop; the next process answers it", NAME, turn)
            return SendResult(success=False, error="the agent is stopping; its next process answers")
        return SendResult(success=True, message_id=await self._journal_reply(chat_id, content, turn))

    async def _journal_reply(self, chat_id: str, content: str, turn: str | None) -> str | None:
        """Journal a message's parts for the send loop; the id of its first part."""
        ids = []
        async with self._lock:
            for part in self.truncate_message(self.format_message(content), BODY_MAX):
                if not part.strip():
                    continue
                if turn:
                    n = self._replied.get(turn, 0)
                    self._replied[turn] = n + 1
                    part_id = f"{turn}.{n}"
                else:
                    part_id = uuid.uuid4().hex
                entry = {"type": "out", "id": part_id, "to": chat_id, "text": part}
                await asyncio.to_thread(self._journal.append, entry)
                ids.append(entry["id"])
        self._outbound_ready.set()
        return ids[0] if ids else None

    async def get_chat_info(self, chat_id: str) -> dict[str, Any]:
        return {"name": chat_id, "type": "dm", "chat_id": chat_id}

    def extract_local_files(self, content: str) -> tuple[list[str], str]:
        return sudo_plugins.own_media_as_words(super().extract_local_files(content), content, self._media)

    async def on_processing_complete(self, event: MessageEvent, outcome: Any) -> None:
        if sudo_plugins.runner_stopping(self) and event.message_id not in self._replied:
            # Cut off by the stop (Hermes interrupts a turn in progress at once): left in the
            # journal, so the next process hands it to Hermes again.
            logger.info(
                "[%s] turn of %s cut off by the stop; it is handed over again", NAME, event.message_id
            )
        elif event.message_id in self._journal.inbound:
            async with self._lock:
                await asyncio.to_thread(self._journal.append, {"type": "done", "id": event.message_id})
        self._replied.pop(event.message_id or "", None)
        ended = self._turn_ends.get(event.message_id or "")
        if ended is not None and not ended.done():
            ended.set_result(asyncio.current_task())  # the hook runs in the turn's own task

    # sudo-api's side

    async def _post_inbound(self, request: web.Request) -> web.Response:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            message_id, number = str(body["id"]), str(body["from"])
            text, name = str(body.get("text") or ""), str(body.get("name") or "")
            media = [
                (str(m["type"]), base64.b64decode(m["data"], validate=True)) for m in body.get("media") or []
            ]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return web.json_response({"error": "expected JSON with id, from, text and media"}, status=400)
        if not E164.match(number) or len(text) > MAX_TEXT or len(media) > MAX_MEDIA:
            return web.json_response(
                {"error": "bad number, text over 4096 characters, or too much media"}, status=400
            )
        if not text.strip() and not media:
            return web.json_response({"error": "the message is empty"}, status=400)
        if sudo_plugins.runner_starting(self) or sudo_plugins.runner_stopping(self):
            # Starting, Hermes would queue it behind its restore pass and report nothing;
            # stopping, it would answer "not accepting new work": refuse instead, and sudo-api
            # delivers again in a moment (to the next agent process, if this one is going).
            return web.json_response({"error": "the agent is starting or stopping"}, status=503)
        async with self._lock:
            if self._journal.knows(message_id):
                return web.json_response({"status": "duplicate"})
            files = await asyncio.to_thread(self._save_media, message_id, media)
            entry = {
                "type": "in",
                "id": message_id,
                "from": number,
                "name": name,
                "text": text,
                "media": files,
            }
            entry = await asyncio.to_thread(self._journal.append, entry)
        self._take_turn(entry)
        return web.json_response({"status": "accepted"}, status=202)

    async def _post_deliver(self, request: web.Request) -> web.Response:
        if not sudo_plugins.authorized(request, self._key):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            chat_id, text = str(body["chat_id"]), str(body["text"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with chat_id and text"}, status=400)
        if not E164.match(chat_id) or not text.strip():
            return web.json_response(
                {"error": "chat_id must be a number in E.164 form, text non-empty"}, status=400
            )
        # Proactive: never part of the number's turn in progress, and sent even during a stop.
        return web.json_response({"message_id": await self._journal_reply(chat_id, text, None)})

    # Inbound, to Hermes

    def _take_turn(self, entry: dict[str, Any]) -> None:
        """Queue a message for its number's next turn."""
        number = entry["from"]
        self._waiting.setdefault(number, collections.deque()).append(entry)
        task = self._turns.get(number)
        if task is None or task.done():
            self._turns[number] = asyncio.create_task(self._hand_over(number))

    async def _hand_over(self, number: str) -> None:
        """Hand Hermes this number's messages one at a time, each once the one before is finished.

        Given a message while it answers another, Hermes interrupts the answer in progress, or
        (queueing) merges the waiting messages into one turn and reports only the first of them
        finished, so the others would be handed over again after a restart. One at a time, each
        message is its own turn, marked done when that turn ends.
        """
        waiting = self._waiting[number]
        await self._started()
        while waiting and not sudo_plugins.runner_stopping(self):  # stopping: the rest stays owed
            entry = waiting.popleft()
            ended = self._turn_ends[entry["id"]] = asyncio.get_running_loop().create_future()
            self._current[number] = entry["id"]
            try:
                await self.handle_message(self._event(entry))
                with contextlib.suppress(TimeoutError):
                    turn = await asyncio.wait_for(ended, TURN_WAIT_SEC)
                    if turn is not None:  # its cleanup after the hook frees the session
                        await asyncio.wait({turn}, timeout=TURN_WAIT_SEC)
            finally:
                self._turn_ends.pop(entry["id"], None)
                self._current.pop(number, None)

    def _save_media(self, message_id: str, media: list[tuple[str, bytes]]) -> list[dict[str, str]]:
        """Write the files where Hermes's vision and transcription read them; old ones go."""
        self._media.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - MEDIA_KEEP_SEC
        for old in self._media.iterdir():
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        files = []
        for n, (kind, data) in enumerate(media):
            extension = EXTENSIONS.get(kind.split(";")[0].strip(), ".bin")
            path = self._media / f"{re.sub(r'[^A-Za-z0-9]', '', message_id)[:64]}-{n}{extension}"
            path.write_bytes(data)
            files.append({"path": str(path), "type": kind.split(";")[0].strip()})
        return files

    def _event(self, entry: dict[str, Any]) -> MessageEvent:
        types = [m["type"] for m in entry["media"]]
        if any(t.startswith("audio/") for t in types):
            kind = MessageType.VOICE  # a WhatsApp voice note: Hermes transcribes it
        elif types:
            kind = MessageType.PHOTO
        else:
            kind = MessageType.TEXT
        name = entry["name"] or entry["from"]
        source = self.build_source(
            chat_id=entry["from"], chat_name=name, chat_type="dm", user_id=entry["from"], user_name=name
        )
        return MessageEvent(
            text=entry["text"],
            message_type=kind,
            source=source,
            raw_message=entry,
            message_id=entry["id"],
            media_urls=[m["path"] for m in entry["media"]],
            media_types=types,
        )

    async def _resume(self) -> None:
        """Queue again what the previous process accepted and never answered (the journal holds
        no new message yet: the listener is not up)."""
        for entry in list(self._journal.inbound.values()):
            if entry["tries"] >= REPLAYS:
                logger.error("[%s] giving up on %s after %d tries", NAME, entry["id"], entry["tries"])
                async with self._lock:
                    await asyncio.to_thread(self._journal.append, {"type": "done", "id": entry["id"]})
                await self._journal_reply(entry["from"], APOLOGY, None)
                continue
            async with self._lock:
                await asyncio.to_thread(self._journal.append, {"type": "retry", "id": entry["id"]})
            logger.info("[%s] handing %s to the agent again after a restart", NAME, entry["id"])
            self._take_turn(entry)

    async def _started(self) -> None:
        """Until Hermes has finished starting: before, it would queue a message behind its
        restore pass and report nothing of it."""
        deadline = time.monotonic() + START_WAIT_SEC
        while sudo_plugins.runner_starting(self) and time.monotonic() < deadline:  # noqa: ASYNC110 (Hermes's flag)
            await asyncio.sleep(0.1)

    # Outbound, to the gateway

    async def _send_loop(self) -> None:
        """Send the journal's messages in order; a message is sent until the gateway takes it."""
        backoff = 1.0
        while True:
            entry = next(iter(self._journal.outbound.values()), None)
            if entry is None:
                self._outbound_ready.clear()
                await self._outbound_ready.wait()
                continue
            status, answer, retry_after = await self._post(entry)
            if status in RETRYABLE or status == 0:
                wait = retry_after if retry_after is not None else backoff
                logger.warning("[%s] send %s: %s; again in %.0f s", NAME, entry["id"], answer, wait)
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, 300.0)
                continue
            backoff = 1.0
            if status >= 400:
                logger.error("[%s] send %s refused for good (%d): %s", NAME, entry["id"], status, answer)
            result = answer.get("status", "failed") if status < 400 else "failed"
            async with self._lock:
                await asyncio.to_thread(
                    self._journal.append, {"type": "sent", "id": entry["id"], "result": result}
                )

    async def _post(self, entry: dict[str, Any]) -> tuple[int, dict[str, Any], float | None]:
        """(status, answer, Retry-After); status 0 when the gateway could not be reached."""
        assert self._http is not None
        headers = {"Authorization": f"Bearer {self._gateway_key}"}
        body = {"id": entry["id"], "to": entry["to"], "body": entry["text"]}
        try:
            async with self._http.post(
                f"{self._gateway}/v1/whatsapp/messages", json=body, headers=headers
            ) as resp:
                answer = await resp.json(content_type=None)
                retry_after = resp.headers.get("Retry-After")
                return (
                    resp.status,
                    answer if isinstance(answer, dict) else {},
                    float(retry_after) if retry_after and retry_after.isdigit() else None,
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, {"error": str(exc)}, None


def _check() -> bool:
    return True


async def _send_from_elsewhere(config: Any, chat_id: str, text: str, **_: Any) -> dict[str, Any]:
    """Delivery from a Hermes process other than the gateway (a cron job run by `hermes cron
    run`): hand the message to the gateway's live adapter, which owns the journal."""
    extra = config.extra or {}
    body = {"chat_id": chat_id, "text": text}
    return await sudo_plugins.deliver(NAME, int(extra.get("port", 8644)), str(extra.get("key", "")), body)


def register(ctx: Any) -> None:
    ctx.register_platform(
        name=NAME,
        label="WhatsApp",
        adapter_factory=lambda config: TwilioWhatsAppAdapter(config),
        check_fn=_check,
        allow_all_env="TWILIO_WHATSAPP_ALLOW_ALL_USERS",
        cron_deliver_env_var="TWILIO_WHATSAPP_HOME_CHANNEL",
        standalone_sender_fn=_send_from_elsewhere,
        platform_hint=(
            "You are talking with a member of the family on WhatsApp. Keep answers short and "
            "plain: *bold* and _italic_ render, tables and headings do not."
        ),
        emoji="📱",
    )
