"""The members' conversations with their family's agent, and the guarantee that nothing said is lost.

Each member has their own thread (`messages.account_id`), which only they read; all threads go
to the family's one agent, where each is its own Hermes session (the plugin's chat id is the
member's account id). The family's Home thread (`messages.home`) holds what its shared home
devices heard and answered by voice: every member reads it, and its messages are stored
answered, since the agent already answered them out loud. What the agent says first out loud
(its sudo_voice platform) is kept there too, for the home devices online to say
(announcements.py). The history is stored in history.py.

A member's message is stored (status `queued`) before sudo-api answers the sender. A channel
per family then wakes the runtime through the provisioner, delivers the family's messages one
at a time to the sudo_chat plugin in its container (`delivered`), and follows the plugin's
event stream: drafts go live to the thread's open pages, final replies and proactive messages
are stored with the cursor of the plugin's durable outbox in one transaction, and the end of
the agent's turn marks the message `answered`.

Recovery follows from the stored state alone:
- sudo-api restarts: queued messages are delivered, delivered ones wait for their reply, which
  sits in the plugin's outbox past the stored cursor.
- the agent restarts mid-reply: the plugin says hello with a new boot id, and whatever the old
  process got but never finished is delivered again, up to `delivery_attempts` times; then it
  is shown as failed, with a retry.
A running runtime's channel follows it with no message pending (watcher.py starts it), so a
cron reminder reaches the history when no page is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import aiohttp
from prometheus_client import Counter, Histogram

from sudo_core.accounts import speaker_label
from sudo_core.config import ApiSettings
from sudo_core.db import Database
from sudo_core.families import api_key_for
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError, RuntimeView

from .announcements import Announcements
from .devices import Devices
from .history import ChatStore, Message
from .limits import TOO_MANY_MESSAGES, Limiter, check_storage
from .markdown import to_html
from .media import Upload
from .push import PROACTIVE, REPLIES, Pusher

log = logging.getLogger("sudo-api.chat")

MESSAGE_MAX = 8000
WAKING_AFTER_SEC = 0.3
"""An ensure slower than this is a cold start: open pages are told the assistant is waking."""
OPEN = ("queued", "delivered")

MESSAGES = Counter("sudo_api_chat_messages_total", "Chat messages stored", ["role"])
REDELIVERED = Counter("sudo_api_chat_redelivered_total", "Messages delivered again after an agent restart")
FAILED = Counter("sudo_api_chat_failed_total", "Messages shown as failed", ["reason"])
REPLY_SECONDS = Histogram(
    "sudo_api_chat_reply_seconds",
    "From a family's message being stored to its agent's turn ending with an answer",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)


class ChatUnavailable(RuntimeError):
    """sudo-api is shutting down and takes no new messages."""


def runtimes_http(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A client for the family runtimes, with no cap on connections at once.

    Every running runtime's event stream stays open (one per family), so aiohttp's default
    pool of 100 left the 101st family's messages waiting for a connection that never freed;
    what bounds the connections is the number of runtimes, each with one stream and one
    request at a time.
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


class Hub:
    """Live events for the pages and API streams open on the members' threads."""

    CLOSED = "closed"
    """The event that ends a stream: its member was removed."""

    def __init__(self) -> None:
        self._listeners: dict[uuid.UUID, dict[asyncio.Queue[dict[str, Any]], str]] = {}

    @contextlib.contextmanager
    def listen(self, family: uuid.UUID, member: uuid.UUID):
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._listeners.setdefault(family, {})[queue] = str(member)
        try:
            yield queue
        finally:
            listeners = self._listeners.get(family, {})
            listeners.pop(queue, None)
            if not listeners:
                self._listeners.pop(family, None)

    def listening(self, family: uuid.UUID, member: str) -> bool:
        """Whether a page or API stream of the member is open on their thread now."""
        return member in self._listeners.get(family, {}).values()

    def publish(self, family: uuid.UUID, event: dict[str, Any], thread: str | None = None) -> None:
        """To the streams of the member whose thread it is; None: to every member (the agent
        waking, or failing to)."""
        for queue, member in list(self._listeners.get(family, {}).items()):
            if thread is not None and member != thread:
                continue
            if queue.full():
                # A listener this far behind reloads the history instead of holding memory.
                while not queue.empty():
                    queue.get_nowait()
                event = {"type": "reset"}
            queue.put_nowait(event)

    def disconnect(self, family: uuid.UUID, member: uuid.UUID | None = None) -> None:
        """End the member's open streams (they were removed), or (None) every member's (the
        family was deleted): each reads CLOSED next."""
        for queue, listener in list(self._listeners.get(family, {}).items()):
            if member is None or listener == str(member):
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": self.CLOSED})


class Conversations:
    def __init__(
        self,
        db: Database,
        provisioner: ProvisionerClient,
        secret: bytes,
        settings: ApiSettings,
        messages: Limiter,
        devices: Devices,
        push: Pusher,
    ) -> None:
        self.db = db
        self.messages = messages
        """The family's message rate, shared with WhatsApp (limits.message_limiter)."""
        self.devices = devices
        """Which home devices are online, to say what the agent says out loud."""
        self.push = push
        """Web Push: the agent's words to a member's browsers while no page of theirs is open."""
        self.store = ChatStore(db)
        self.hub = Hub()
        self.announcements = Announcements(db, self._show_stored)
        self.provisioner = provisioner
        self.settings = settings
        self._secret = secret
        self._channels: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wake: dict[uuid.UUID, asyncio.Event] = {}
        self._threads: dict[str | None, str | None] = {}
        """Whose thread each message being answered is in, for its drafts."""
        self._http = runtimes_http(aiohttp.ClientTimeout(total=None, sock_connect=5))
        self.closing = False
        self._settled = asyncio.Event()
        """Set whenever a delivered message gets its answer or fails."""

    async def start(self) -> None:
        for family in await self.db.aio(self.store.families_with_open_messages):
            self.kick(family)
        self.announcements.start()

    async def stop(self) -> None:
        """Take no new messages; let replies in progress finish (bounded); then stop reading."""
        self.closing = True
        deadline = time.monotonic() + self.settings.shutdown_grace_sec
        while await self._replies_in_progress() and time.monotonic() < deadline:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), deadline - time.monotonic())
        tasks = list(self._channels.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.announcements.stop()
        await self._http.close()

    async def _replies_in_progress(self) -> bool:
        families = [f for f, t in self._channels.items() if not t.done()]
        for family in families:
            if any(m.status == "delivered" for m in await self.db.aio(self.store.open_messages, family)):
                return True
        return False

    # What the API calls

    async def send(
        self, family: uuid.UUID, member: uuid.UUID, text: str, sender: str, media: Upload | None = None
    ) -> Message:
        """Store and deliver a member's message; RateLimited past the family's message rate,
        StorageFull past its volume's quota. Its photo or voice note (`media`) is handed to the
        sudo_chat plugin, which keeps it on the family's volume, before the message is stored:
        sudo-api keeps no file past the request."""
        if self.closing:
            raise ChatUnavailable("sudo-api is restarting; send again in a moment")
        await check_storage(self.db, family)
        self.messages.reserve(TOO_MANY_MESSAGES, family=str(family))
        message_id = uuid.uuid4().hex
        if media is not None:
            await self._put_media(family, message_id, media)
        message = await self.db.aio(
            self.store.add_user_message, family, member, text, sender, message_id, media
        )
        MESSAGES.labels("user").inc()
        self._show(family, message)
        self.kick(family)
        return message

    async def _put_media(self, family: uuid.UUID, message_id: str, media: Upload) -> None:
        """Hand a message's file to the plugin, waking the runtime (open pages hear "waking")."""
        try:
            runtime = await self._wake_runtime(family)
            async with self._http.put(
                f"{runtime.chat_url}/media/{message_id}",
                data=media.data,
                headers=self._headers(family) | {"Content-Type": media.type},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                if resp.status != 201:
                    detail = (await resp.json(content_type=None) or {}).get("error", resp.reason)
                    raise ChatUnavailable(f"your assistant did not take the file ({detail}); send it again")
        except (ProvisionerError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("cannot hand a file to the assistant of %s: %s", family, exc)
            raise ChatUnavailable(
                "your assistant could not be reached; send the file again in a moment"
            ) from exc

    async def media(self, family: uuid.UUID, member: uuid.UUID, message_id: str) -> tuple[str, bytes] | None:
        """The photo or voice note the member sent with a message of their own thread, from the
        family's volume (the runtime woken for it); None for any other message."""
        kind = await self.db.aio(self.store.media_type_of, family, member, message_id)
        if kind is None:
            return None
        try:
            runtime = await self.provisioner.ensure(family)
            async with self._http.get(
                f"{runtime.chat_url}/media/{message_id}",
                headers=self._headers(family),
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                if resp.status == 404:  # gone from the volume (a volume restored from before it)
                    return None
                resp.raise_for_status()
                return kind, await resp.read()
        except (ProvisionerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot fetch a file from the assistant of %s: %s", family, exc)
            raise ChatUnavailable("your assistant could not be reached; try again in a moment") from exc

    def _headers(self, family: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key_for(self._secret, family)}"}

    async def add_voice_turn(
        self, family: uuid.UUID, device: uuid.UUID, heard: str, answered: str
    ) -> list[Message] | None:
        """Store a turn a home device heard and answered, and show it to every member's open
        pages; None if the device is not the family's."""
        messages = await self.db.aio(self.store.add_voice_turn, family, device, heard, answered)
        for message in messages or []:
            MESSAGES.labels(message.role).inc()
            self._show(family, message)
        return messages

    async def retry(self, family: uuid.UUID, member: uuid.UUID, message_id: str) -> Message | None:
        if self.closing:
            raise ChatUnavailable("sudo-api is restarting; retry in a moment")
        message = await self.db.aio(self.store.retry, family, member, message_id)
        if message:
            self._show(family, message)
            self.kick(family)
        return message

    def _show(self, family: uuid.UUID, message: Message) -> None:
        """A stored message, new or changed, to the streams open on its thread (a Home message,
        with no member's account, to every member's)."""
        self.hub.publish(family, {"type": "message", "message": message.to_json()}, message.account_id)

    async def _show_stored(self, family: uuid.UUID, message_id: str) -> None:
        message = await self.db.aio(self.store.get, family, message_id)
        if message:
            self._show(family, message)

    def kick(self, family: uuid.UUID) -> None:
        """Make sure a channel serves this family, and wake it if it is waiting."""
        self._wake.setdefault(family, asyncio.Event()).set()
        self.follow(family)

    def follow(self, family: uuid.UUID) -> None:
        """Make sure a channel serves this family: it follows the family's running runtime."""
        task = self._channels.get(family)
        if task is None or task.done():
            self._channels[family] = asyncio.create_task(self._channel(family), name=f"chat-{family}")

    # Channels

    async def _channel(self, family: uuid.UUID) -> None:
        backoff = 0.5
        while True:
            pending = await self.db.aio(self.store.open_messages, family)
            try:
                if pending:
                    runtime = await self._wake_runtime(family)
                else:
                    runtime = await self.provisioner.get(family)
                    if not runtime.running or not runtime.chat_url:
                        return
                await self._follow(family, runtime)
                backoff = 0.5
                continue
            except ProvisionerError as exc:
                if not pending:
                    return  # no runtime and nothing to say: nothing to follow
                if exc.status != 503:
                    reason = exc.body.get("error", str(exc))
                    log.error("cannot wake the assistant of %s: %s", family, reason)
                    for message in await self.db.aio(
                        self.store.fail_open, family, f"could not wake the assistant: {reason}"
                    ):
                        FAILED.labels("wake").inc()
                        self._show(family, message)
                    self.hub.publish(family, {"type": "status", "state": "failed", "detail": reason})
                    return
                lost: Exception = exc  # 503: the Docker engine is away (restarting): wait for it
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                lost = exc
            if pending and time.time() - pending[0].created_at > self.settings.reply_timeout_sec:
                # Never silently waiting forever: say so, and let the family retry.
                reason = f"could not reach the assistant: {lost}"
                for message in await self.db.aio(self.store.fail_open, family, reason):
                    FAILED.labels("unreachable").inc()
                    self._show(family, message)
                return
            log.info("lost the agent of %s (%s); reconnecting in %.1f s", family, lost, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _wake_runtime(self, family: uuid.UUID) -> RuntimeView:
        ensure = asyncio.ensure_future(self.provisioner.ensure(family))
        done, _ = await asyncio.wait({ensure}, timeout=WAKING_AFTER_SEC)
        if not done:
            self.hub.publish(family, {"type": "status", "state": "waking"})
        runtime = await ensure
        if not done:
            self.hub.publish(family, {"type": "status", "state": "ready"})
        return runtime

    async def _follow(self, family: uuid.UUID, runtime: RuntimeView) -> None:
        """Read the plugin's events until the stream ends, delivering messages alongside."""
        headers = self._headers(family)
        boot, seq = await self.db.aio(self.store.cursor, family)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        url = f"{runtime.chat_url}/events"
        async with self._http.get(url, params={"after": seq}, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            hello = json.loads(await resp.content.readline())
            if hello.get("type") != "hello":
                raise ValueError(f"expected hello from sudo_chat, got {hello!r}")
            if hello["boot"] != boot:
                requeued, failed, cursor = await self.db.aio(
                    self.store.new_agent_process,
                    family,
                    hello["boot"],
                    hello["seq"],
                    self.settings.delivery_attempts,
                )
                REDELIVERED.inc(len(requeued))
                FAILED.labels("restarts").inc(len(failed))
                for message in failed:
                    self._show(family, message)
                if cursor != seq:
                    return  # the outbox was recreated: read it again from the start
            deliverer = asyncio.create_task(self._deliver(family, runtime.chat_url, headers))
            try:
                async for line in resp.content:
                    if deliverer.done():
                        deliverer.result()  # a delivery error ends this connection
                    if line.strip():
                        await self._on_event(family, json.loads(line))
            finally:
                deliverer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await deliverer

    async def _on_event(self, family: uuid.UUID, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("draft", "turn_started"):
            reply_to = event.get("reply_to")
            thread = self._threads.get(reply_to) if reply_to else None
            if thread is None and reply_to:
                thread = await self.db.aio(self.store.thread_of, family, reply_to)
                self._threads[reply_to] = thread
            if thread is None:
                return  # a draft of nobody's turn (a reminder being written): nothing to show
            if kind == "draft":
                text = str(event["text"])
                draft = {"type": "draft", "reply_to": reply_to, "text": text, "html": to_html(text)}
                self.hub.publish(family, draft, thread)
            else:
                self.hub.publish(
                    family, {"type": "status", "state": "thinking", "reply_to": reply_to}, thread
                )
        elif "seq" in event:
            speakers = await self.db.aio(self.devices.online_ids, family) if event.get("speak") else []
            for message in await self.db.aio(self.store.apply, family, event, speakers):
                if message.role == "assistant" and kind == "message":
                    MESSAGES.labels("assistant").inc()
                if message.home and kind == "message":
                    self.announcements.added(message.status, speakers)
                if message.status == "failed":
                    FAILED.labels("agent").inc()
                elif message.status == "answered":
                    REPLY_SECONDS.observe(message.updated_at - message.created_at)
                self._show(family, message)
                await self._notify(family, kind, message)
            if kind == "turn_done":
                self._threads.pop(event.get("reply_to"), None)
                self._wake.setdefault(family, asyncio.Event()).set()
                self._settled.set()

    async def _notify(self, family: uuid.UUID, kind: str, message: Message) -> None:
        """A push to the member's browsers: their message answered (the turn ended) while no page
        of theirs is open to see it, or a message the agent wrote of its own (a reminder)."""
        member = message.account_id
        if member is None or message.home:
            return
        if kind == "turn_done" and message.status == "answered" and not self.hub.listening(family, member):
            text = await self.db.aio(self.store.reply_text, family, message.id)
            if text:
                self.push.notify(member, REPLIES, "Your assistant answered", text, "/chat")
        elif kind == "message" and message.role == "assistant" and message.reply_to is None:
            url = f"/chat?around={message.id}"
            self.push.notify(member, PROACTIVE, "A message from your assistant", message.text, url)

    async def _deliver(self, family: uuid.UUID, chat_url: str, headers: dict[str, str]) -> None:
        """Give the agent the family's messages in order, each once its previous one is answered.

        A message already in flight when this connection began is handed over once more: a
        sudo-api killed between marking it delivered and the agent taking it left it in flight
        with an agent that never heard of it (and that keeps its boot id, so nothing else would
        deliver it again). The plugin drops an id it already has, so this is safe.
        """
        wake = self._wake.setdefault(family, asyncio.Event())
        handed: set[str] = set()
        while True:
            wake.clear()
            message, claimed = await self.db.aio(self.store.next_to_deliver, family)
            if message is None:
                await wake.wait()
                continue
            if not claimed and message.id not in handed:
                if await self._hand_over(chat_url, headers, family, message, claimed=False):
                    handed.add(message.id)
                continue
            if not claimed:  # in flight: wait for its answer, or give up on it in time
                left = message.updated_at + self.settings.reply_timeout_sec - time.time()
                if left <= 0:
                    await self._fail(family, message.id, "no answer from the assistant in time", "timeout")
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
                continue
            handed.add(message.id)
            await self._hand_over(chat_url, headers, family, message, claimed=True)

    async def _hand_over(
        self, chat_url: str, headers: dict[str, str], family: uuid.UUID, message: Message, claimed: bool
    ) -> bool:
        """POST one message to the plugin; whether it took it (or refused it for good).

        A message claimed for this hand-over that did not get through goes back to the queue,
        its attempt undone; one handed over again stays in flight, for the next try.
        """
        speaker = await self.db.aio(self.store.speaker, message.account_id)
        if speaker is None:  # the member was removed meanwhile (their thread went with them)
            await self._fail(family, message.id, "its sender is no longer a member of the family", "removed")
            return True
        self._threads[message.id] = message.account_id
        body = {
            "id": message.id,
            "text": message.text,
            "chat": message.account_id,
            "sender": speaker_label(*speaker),
        } | ({"media": message.media_type} if message.media_type else {})
        try:
            async with self._http.post(
                f"{chat_url}/messages",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                if resp.status == 503:  # Hermes is still starting
                    if claimed:
                        await self.db.aio(self.store.unmark_delivered, message.id)
                    await asyncio.sleep(0.3)
                    return False
                if resp.status >= 400:
                    detail = (await resp.json(content_type=None) or {}).get("error", resp.reason)
                    await self._fail(
                        family, message.id, f"the assistant refused the message: {detail}", "refused"
                    )
                return True
        except BaseException:
            if claimed:
                # The plugin ignores a message id it already has, so giving it again is safe.
                await asyncio.shield(self.db.aio(self.store.unmark_delivered, message.id))
            raise

    async def _fail(self, family: uuid.UUID, message_id: str, error: str, reason: str) -> None:
        await self.db.aio(self.store.set_status, message_id, "failed", error)
        FAILED.labels(reason).inc()
        self._settled.set()
        message = await self.db.aio(self.store.get, family, message_id)
        if message:
            self._show(family, message)
