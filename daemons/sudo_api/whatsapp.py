"""WhatsApp on sudo-api's side: Twilio's webhooks, the inbox, and delivery to the family's agent.

Twilio posts each message to `/v1/whatsapp/inbound`, signed with the account's auth token over
the URL it called. A message from a number some family linked is written to the inbox
(keyed by Twilio's MessageSid, so a retried webhook is stored once) before Twilio hears back;
a channel per family then wakes the runtime and hands the message, with its media fetched
from Twilio here on the host, to the twilio_whatsapp plugin in the container. It stays
`received` until the plugin has it in its own journal, so a restart of sudo-api or of the
container in between delivers it later, and the plugin's id check makes it once.

An unknown number gets one reply saying how to link it (at most one per
`api.stranger_reply_sec`), and nothing of it is stored or reaches any agent. Whatever cannot
reach the agent (unsupported or oversized media, an agent that cannot be woken) is answered
with a notice rather than dropped in silence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from prometheus_client import Counter
from twilio.request_validator import RequestValidator

from sudo_core import twilio
from sudo_core.accounts import speaker_label
from sudo_core.config import ApiSettings
from sudo_core.db import Database
from sudo_core.families import api_key_for
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError
from sudo_core.whatsapp import OutboundStore, deliver

from .chat import runtimes_http
from .limits import TOO_MANY_MESSAGES, Limiter, RateLimited, StorageFull, check_storage
from .media import MEDIA_MAX, MEDIA_TYPES, TOO_LARGE, UNSUPPORTED, kind_name, media_type

log = logging.getLogger("sudo-api.whatsapp")

WEBHOOK_MAX = 64 * 1024
INBOX_KEEP_SEC = 2 * 86400
"""Delivered messages are kept this long: Twilio's retries are deduplicated, the window is known."""
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

STRANGER_REPLY = (
    "Hello! This WhatsApp number belongs to Sudo, a family assistant. To talk to your family's "
    "assistant here, add this number on the Integrations page of your family's Sudo account, "
    "then write again."
)
UNREACHABLE = "Sorry, your assistant could not be reached just now. Please send your message again later."

INBOUND = Counter("sudo_api_whatsapp_inbound_total", "WhatsApp webhooks", ["outcome"])
DELIVERED = Counter("sudo_api_whatsapp_delivered_total", "WhatsApp messages handed to agents", ["outcome"])
STATUS = Counter("sudo_api_whatsapp_status_total", "Twilio status callbacks", ["status"])


class WebhookRejected(Exception):
    """A request that is not a valid Twilio webhook: (HTTP status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def signed_url(request: web.Request, trusted_proxies: tuple[str, ...]) -> str:
    """The URL Twilio signed: as the trusted proxy (Caddy) received it, else as we did."""
    scheme, host = request.scheme, request.host
    if is_trusted(request.remote, trusted_proxies):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return f"{scheme}://{host}{request.raw_path}"


def is_trusted(remote: str | None, trusted: tuple[str, ...]) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote) in {
            ipaddress.ip_address(t) for t in trusted
        }
    except ValueError:
        return False


async def webhook_form(
    request: web.Request, auth_token: str | None, trusted: tuple[str, ...]
) -> dict[str, str]:
    """The form of a Twilio webhook whose X-Twilio-Signature is right; WebhookRejected otherwise."""
    if (request.content_length or 0) > WEBHOOK_MAX:
        raise WebhookRejected(413, "a Twilio webhook is a small form")
    try:
        raw = await request.read()  # read already, bounded in time and size (app.whole_body)
    except web.HTTPRequestEntityTooLarge:
        raise WebhookRejected(413, "a Twilio webhook is a small form") from None
    if len(raw) > WEBHOOK_MAX:
        raise WebhookRejected(413, "a Twilio webhook is a small form")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not auth_token:
        raise WebhookRejected(403, "WhatsApp is not set up: no Twilio auth token to check signatures with")
    try:
        params = dict(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw)))
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "the body must be a form") from None
    url = signed_url(request, trusted)
    if not signature or not RequestValidator(auth_token).validate(url, params, signature):
        log.warning("refused a webhook with a missing or wrong X-Twilio-Signature for %s", url)
        raise WebhookRejected(403, "missing or wrong X-Twilio-Signature")
    return params


class Inbox:
    """The inbox and the strangers' rate limit; every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def family_of(self, number: str) -> uuid.UUID | None:
        row = self.db.query_one(
            "SELECT family_id FROM whatsapp_numbers WHERE number = ? AND verified_at IS NOT NULL", (number,)
        )
        return uuid.UUID(row["family_id"]) if row else None

    def store(
        self, sid: str, family: uuid.UUID, number: str, name: str, body: str, media: list[dict[str, str]]
    ) -> bool:
        """Whether the message is new (Twilio retries a webhook it got no answer to)."""
        now = time.time()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO whatsapp_inbox (sid, family_id, number, profile_name, body, media, status,"
            " received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'received', ?, ?)",
            (sid, str(family), number, name, body, json.dumps(media), now, now),
        )
        if cur.rowcount:
            self.db.touch_family(family, now)
        return cur.rowcount > 0

    def open(self, family: uuid.UUID) -> list[dict[str, Any]]:
        """The messages not yet handed over, each with the member whose number sent it (None: the
        number was unlinked since, its member removed)."""
        rows = self.db.query(
            "SELECT i.*, a.display_name AS member_name, a.role AS member_role FROM whatsapp_inbox i"
            " LEFT JOIN whatsapp_numbers n ON n.number = i.number AND n.family_id = i.family_id"
            " AND n.verified_at IS NOT NULL LEFT JOIN accounts a ON a.id = n.account_id"
            " WHERE i.family_id = ? AND i.status = 'received' ORDER BY i.received_at",
            (str(family),),
        )
        return [dict(r) | {"media": json.loads(r["media"])} for r in rows]

    def families_with_open(self) -> list[uuid.UUID]:
        rows = self.db.query("SELECT DISTINCT family_id FROM whatsapp_inbox WHERE status = 'received'")
        return [uuid.UUID(r["family_id"]) for r in rows]

    def mark(self, sid: str, status: str, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE whatsapp_inbox SET status = ?, error = ?, updated_at = ? WHERE sid = ?",
            (status, error, time.time(), sid),
        )

    def stranger_reply_due(self, number: str, interval: float) -> bool:
        """Whether this unknown number may be told (again) how to link itself; counts it if so."""
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO whatsapp_strangers (number, replied_at) VALUES (?, ?) ON CONFLICT(number)"
            " DO UPDATE SET replied_at = excluded.replied_at WHERE replied_at < ?",
            (number, now, now - interval),
        )
        return cur.rowcount > 0

    def prune(self, stranger_interval: float) -> None:
        now = time.time()
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM whatsapp_inbox WHERE status != 'received' AND received_at < ?",
                (now - INBOX_KEEP_SEC,),
            )
            self.db.execute("DELETE FROM whatsapp_strangers WHERE replied_at < ?", (now - stranger_interval,))


class WhatsApp:
    def __init__(
        self,
        db: Database,
        provisioner: ProvisionerClient,
        secret: bytes,
        settings: ApiSettings,
        messages: Limiter,
    ) -> None:
        self.db = db
        self.messages = messages
        """The family's message rate, shared with the web chat (limits.message_limiter)."""
        self.inbox = Inbox(db)
        self.outbound = OutboundStore(db)
        self.provisioner = provisioner
        self.settings = settings
        self._secret = secret
        self._channels: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruned_at = 0.0
        self._http = runtimes_http(aiohttp.ClientTimeout(total=120, sock_connect=10))

    async def start(self) -> None:
        for family in await self.db.aio(self.inbox.families_with_open):
            self.kick(family)

    async def stop(self) -> None:
        """Stop delivering: what is not handed over yet stays `received` for the next start."""
        tasks = [*self._channels.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.close()

    async def auth_token(self) -> str | None:
        return (await self.db.aio(self.db.get_settings, "twilio.auth_token")).get("twilio.auth_token")

    # Webhooks

    async def receive(self, form: dict[str, str]) -> str:
        """Take one inbound message; answers what became of it. Twilio hears back after this."""
        sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
        number = form.get("From", "").removeprefix("whatsapp:")
        if not sid or not twilio.E164.match(number):
            INBOUND.labels("malformed").inc()
            raise WebhookRejected(400, "MessageSid and a From number in E.164 form are required")
        if time.monotonic() > self._pruned_at + 3600:
            self._pruned_at = time.monotonic()
            self._background(self.db.aio(self.inbox.prune, self.settings.stranger_reply_sec))
        family = await self.db.aio(self.inbox.family_of, number)
        if family is None:
            if await self.db.aio(self.inbox.stranger_reply_due, number, self.settings.stranger_reply_sec):
                self._background(self.notify(None, number, STRANGER_REPLY))
            INBOUND.labels("stranger").inc()
            return "stranger"
        try:
            count = min(int(form.get("NumMedia") or 0), 10)
        except ValueError:
            count = 0
        media = [
            {"url": form[f"MediaUrl{i}"], "type": form.get(f"MediaContentType{i}", "")}
            for i in range(count)
            if form.get(f"MediaUrl{i}")
        ]
        body, name = form.get("Body", ""), form.get("ProfileName", "")
        try:
            await check_storage(self.db, family)
            attempt = self.messages.reserve(TOO_MANY_MESSAGES, family=str(family))
        except (RateLimited, StorageFull) as exc:
            held = "limited" if isinstance(exc, RateLimited) else "storage-full"
            INBOUND.labels(held).inc()
            with contextlib.suppress(RateLimited):  # one notice a minute per number
                self.messages.reserve("", told=number)
                notice = (
                    f"Sorry: {exc.what}, so this one did not reach it. Send it in {exc.retry_after} s."
                    if isinstance(exc, RateLimited)
                    else f"Sorry: this message did not reach the assistant: {exc}."
                )
                self._background(self.notify(family, number, notice))
            return held
        if not await self.db.aio(self.inbox.store, sid, family, number, name, body, media):
            attempt.give_back()  # Twilio's retry of a message already counted
            INBOUND.labels("duplicate").inc()
            return "duplicate"
        INBOUND.labels("accepted").inc()
        self.kick(family)
        self._background(self._release_held(family, number))
        return "accepted"

    async def on_status(self, form: dict[str, str]) -> None:
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        code, text = form.get("ErrorCode"), form.get("ErrorMessage")
        error = f"{text or 'error'} (Twilio {code})" if code else None
        if await self.db.aio(self.outbound.on_status, form.get("MessageSid", ""), status, error):
            STATUS.labels(status).inc()
        if status in ("failed", "undelivered"):
            log.warning("WhatsApp message %s %s: %s", form.get("MessageSid"), status, error)

    # Delivery to the family's agent

    def kick(self, family: uuid.UUID) -> None:
        task = self._channels.get(family)
        if task is None or task.done():
            self._channels[family] = asyncio.create_task(self._channel(family), name=f"whatsapp-{family}")

    async def _channel(self, family: uuid.UUID) -> None:
        backoff = 0.5
        while pending := await self.db.aio(self.inbox.open, family):
            try:
                runtime = await self.provisioner.ensure(family)
                for message in pending:
                    await self._deliver(family, runtime.whatsapp_url, message)
                backoff = 0.5
                continue
            except ProvisionerError as exc:
                if exc.status != 503:
                    reason = exc.body.get("error", str(exc))
                    log.error("cannot wake the assistant of %s for WhatsApp: %s", family, reason)
                    await self._give_up(family, pending, f"could not wake the assistant: {reason}")
                    continue
                lost: Exception = exc  # 503: the Docker engine is away (restarting): wait for it
            except (
                aiohttp.ClientError,
                twilio.TwilioError,
                OSError,
                TimeoutError,
                ValueError,
                KeyError,
            ) as exc:
                lost = exc
            if time.time() - pending[0]["received_at"] > self.settings.reply_timeout_sec:
                await self._give_up(family, pending[:1], f"could not reach the assistant: {lost}")
                continue
            log.info("WhatsApp for %s: %s; again in %.1f s", family, lost, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _deliver(self, family: uuid.UUID, url: str, message: dict[str, Any]) -> None:
        if message["member_name"] is None:
            await self.db.aio(self.inbox.mark, message["sid"], "failed", "the number is no longer linked")
            DELIVERED.labels("unlinked").inc()
            return
        media, notices = await self._media(message["media"])
        for i, notice in enumerate(notices):  # once per message, however often delivery is retried
            self._background(self.notify(family, message["number"], notice, once=f"{message['sid']}:{i}"))
        if not message["body"].strip() and not media:
            await self.db.aio(self.inbox.mark, message["sid"], "delivered", "nothing the agent can read")
            DELIVERED.labels("nothing_readable").inc()
            return
        body = {
            "id": message["sid"],
            "from": message["number"],
            "name": speaker_label(message["member_name"], message["member_role"]),
            "text": message["body"],
            "media": media,
        }
        headers = {"Authorization": f"Bearer {api_key_for(self._secret, family)}"}
        deadline = time.monotonic() + 120
        while True:
            async with self._http.post(f"{url}/inbound", json=body, headers=headers) as resp:
                if resp.status in (200, 202):
                    await self.db.aio(self.inbox.mark, message["sid"], "delivered")
                    DELIVERED.labels("accepted" if resp.status == 202 else "duplicate").inc()
                    return
                if resp.status != 503 or time.monotonic() > deadline:
                    detail = (await resp.json(content_type=None) or {}).get("error", resp.reason)
                    await self._give_up(family, [message], f"the assistant refused the message: {detail}")
                    return
            await asyncio.sleep(0.5)  # Hermes is still starting

    async def _media(self, items: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
        """The message's files fetched from Twilio, as the plugin takes them; notices for the rest."""
        files: list[dict[str, str]] = []
        unsupported: list[str] = []
        too_large = False
        if not items:
            return files, []
        account = twilio.Account.from_settings(await self.db.aio(self.db.get_settings, "twilio."))
        for item in items:
            kind = media_type(item["type"])
            if kind not in MEDIA_TYPES:
                unsupported.append(kind_name(kind))
                continue
            fetched = await twilio.fetch_media(self._http, account, item["url"], MEDIA_MAX)
            if fetched is None:
                too_large = True
                continue
            files.append({"type": kind, "data": base64.b64encode(fetched[0]).decode()})
        notices = [UNSUPPORTED.format(kinds=", ".join(sorted(set(unsupported))))] if unsupported else []
        return files, notices + ([TOO_LARGE] if too_large else [])

    async def _give_up(self, family: uuid.UUID, messages: list[dict[str, Any]], error: str) -> None:
        for message in messages:
            await self.db.aio(self.inbox.mark, message["sid"], "failed", error)
            DELIVERED.labels("failed").inc()
            self._background(self.notify(family, message["number"], UNREACHABLE))

    # Messages from the host

    async def notify(self, family: uuid.UUID | None, number: str, text: str, once: str | None = None) -> None:
        """A notice in answer to a message the number just sent (the window is open); with
        `once`, a key, it is sent only the first time that key is given."""
        try:
            account = twilio.Account.from_settings(await self.db.aio(self.db.get_settings, "twilio."))
        except twilio.TwilioNotConfigured as exc:
            log.error("cannot answer %s on WhatsApp: %s", number, exc)
            return
        message, mine = await self.db.aio(
            self.outbound.claim, f"notice:{once or uuid.uuid4().hex}", family, number, text
        )
        if not mine:
            return
        result = await deliver(self._http, self.db, account, message, replying=True)
        if result.status >= 400:
            log.error("WhatsApp notice to %s not sent: %s", number, result.message.error)

    async def _release_held(self, family: uuid.UUID, number: str) -> None:
        """The number wrote, so the window is open again: send what its family held for it, in order."""
        held = await self.db.aio(self.outbound.held, family, number)
        if not held:
            return
        account = twilio.Account.from_settings(await self.db.aio(self.db.get_settings, "twilio."))
        for message in held:
            if not await self.db.aio(self.outbound.release, message.id):
                continue  # another webhook of this number released it
            result = await deliver(self._http, self.db, account, message, replying=True)
            if result.message.status in ("sending", "retrying"):  # Twilio unreachable: hold it again
                await self.db.aio(self.outbound.record, message.id, "held", error=result.message.error)
                return

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(coro: Coroutine[Any, Any, Any]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await coro
            except Exception:
                log.exception("WhatsApp background work failed")
