"""What the family's agent says first, out loud at home: its messages to the sudo_voice platform.

The path from the agent to a home device's speaker:
1. In the container, the sudo_voice plugin hands the message to the sudo_chat plugin's durable
   outbox, marked `speak` (one way out of the container for everything the agent says).
2. sudo-api's watcher reads it with the family's other proactive messages (chat.py), and
   `ChatStore.apply` stores it, in one transaction with the outbox's cursor, in the family's
   Home thread, with an announcement for each of the family's home devices online at that
   moment (a heartbeat within three intervals, `Devices.online_ids`).
3. The voice bridge's session in each device's room holds a long poll for its announcements
   (`GET /v1/service/rooms/{room}/announcements?wait=`), says each one, and acknowledges it
   (`POST .../announcements/{id}/spoken`). An announcement is handed out until acknowledged: a
   bridge that restarts says again only what it had not acknowledged (what it was saying when it
   stopped), and loses nothing.

The Home thread message is `to_speak` until a device said it, then `spoken`; `not_spoken` if no
home device was online when it came (or it came too late, sudo-api having been down), or none
said it within ANNOUNCE_WITHIN_SEC. A reminder heard late is worse than one read: "time to leave
for school" an hour later is wrong, so an announcement that old is no longer handed out, and the
message stays in the Home thread as a note for the family to read. The Home thread, rather than
the owner's own: the agent spoke to whoever is at home, and every member reads Home.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import Counter

from sudo_core.db import Database

log = logging.getLogger("sudo-api.announcements")

ANNOUNCE_WITHIN_SEC = 300.0
"""How long after the agent said it an announcement may still be spoken (seconds)."""
SWEEP_SEC = 15.0
"""How often announcements past their time are given up (seconds)."""
WAIT_MAX_SEC = 60.0
"""The longest a room's long poll may wait for an announcement (seconds)."""

ANNOUNCED = Counter(
    "sudo_api_announcements_total",
    "What the agent said to the family's home devices: messages stored to_speak or not_spoken (no"
    " device online, or none said it in time), and each room's spoken",
    ["outcome"],
)


@dataclass(frozen=True)
class Announcement:
    id: str
    """The id of its message in the family's Home thread."""
    text: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AnnouncementStore:
    """The announcements in SQLite; every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, family: uuid.UUID, message_id: str, text: str, said_at: float, devices: Sequence[uuid.UUID]
    ) -> str:
        """Keep the agent's words in the family's Home thread, for `devices` to say until
        `said_at` + ANNOUNCE_WITHIN_SEC; their status. Runs in the caller's transaction (with the
        outbox's cursor); a message id already stored (the outbox read again) changes nothing."""
        now = time.time()
        speak = bool(devices) and now - said_at < ANNOUNCE_WITHIN_SEC
        status = "to_speak" if speak else "not_spoken"
        cur = self.db.execute(
            "INSERT OR IGNORE INTO messages (id, family_id, account_id, home, role, sender, text, status,"
            " created_at, updated_at) VALUES (?, ?, NULL, 1, 'assistant', 'assistant', ?, ?, ?, ?)",
            (message_id, str(family), text, status, now, now),
        )
        if not cur.rowcount:
            return ""
        for device in devices if speak else ():
            self.db.execute(
                "INSERT INTO announcements (device_id, message_id, family_id, expires_at)"
                " SELECT id, ?, family_id, ? FROM devices WHERE id = ? AND family_id = ?",
                (message_id, said_at + ANNOUNCE_WITHIN_SEC, str(device), str(family)),
            )
        return status

    def pending(self, family: uuid.UUID, device: uuid.UUID, now: float) -> list[Announcement]:
        """What the device's room has still to say, oldest first."""
        rows = self.db.query(
            "SELECT m.id, m.text, m.created_at FROM announcements a JOIN messages m ON m.id = a.message_id"
            " WHERE a.device_id = ? AND a.family_id = ? AND a.expires_at > ? ORDER BY m.n",
            (str(device), str(family), now),
        )
        return [Announcement(r["id"], r["text"], r["created_at"]) for r in rows]

    def spoken(self, family: uuid.UUID, device: uuid.UUID, message_id: str) -> bool:
        """The device's room said it: it is done there, and its message `spoken`. False when the
        room owes no such announcement (acknowledged already, given up, or never its own)."""
        with self.db.transaction():
            cur = self.db.execute(
                "DELETE FROM announcements WHERE device_id = ? AND message_id = ? AND family_id = ?",
                (str(device), message_id, str(family)),
            )
            if not cur.rowcount:
                return False
            self.db.execute(
                "UPDATE messages SET status = 'spoken', updated_at = ?"
                " WHERE id = ? AND status IN ('to_speak', 'not_spoken')",
                (time.time(), message_id),
            )
        return True

    def expire(self, now: float) -> list[tuple[uuid.UUID, str]]:
        """Give up the announcements past their time; (family, message id) of each message that
        no device said, now `not_spoken`. A message whose devices were all revoked is one too."""
        with self.db.transaction():
            self.db.execute("DELETE FROM announcements WHERE expires_at <= ?", (now,))
            rows = self.db.query(
                "SELECT id, family_id FROM messages WHERE status = 'to_speak'"
                " AND NOT EXISTS (SELECT 1 FROM announcements a WHERE a.message_id = messages.id)"
            )
            for row in rows:
                self.db.execute(
                    "UPDATE messages SET status = 'not_spoken', updated_at = ? WHERE id = ?", (now, row["id"])
                )
        return [(uuid.UUID(r["family_id"]), r["id"]) for r in rows]


class Announcements:
    """The rooms' long polls for what to say, and the sweep of announcements no device said.

    `show(family, message id)` puts a Home thread message that changed on the members' open pages.
    """

    def __init__(self, db: Database, show: Callable[[uuid.UUID, str], Awaitable[None]]) -> None:
        self.db = db
        self.store = AnnouncementStore(db)
        self._show = show
        self._waiting: dict[uuid.UUID, set[asyncio.Event]] = {}
        """Per device, the long polls of its room waiting for an announcement."""
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="announcements-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def added(self, status: str, devices: Iterable[uuid.UUID]) -> None:
        """A message was stored for the home devices with `status` (AnnouncementStore.add): wake
        the rooms that wait for it."""
        if not status:
            return
        ANNOUNCED.labels(status).inc()
        for device in devices if status == "to_speak" else ():
            for woken in self._waiting.get(device, ()):
                woken.set()

    async def wait(self, family: uuid.UUID, device: uuid.UUID, seconds: float) -> list[Announcement]:
        """What the device's room has to say; if nothing, waits up to `seconds` for something."""
        woken = asyncio.Event()
        waiting = self._waiting.setdefault(device, set())
        waiting.add(woken)  # before looking, so an announcement stored meanwhile is not missed
        deadline = time.monotonic() + seconds
        try:
            while True:
                woken.clear()
                pending = await self.db.aio(self.store.pending, family, device, time.time())
                left = deadline - time.monotonic()
                if pending or left <= 0:
                    return pending
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), left)
        finally:
            waiting.discard(woken)
            if not waiting:
                self._waiting.pop(device, None)

    async def spoken(self, family: uuid.UUID, device: uuid.UUID, message_id: str) -> bool:
        """The device's room said the announcement; False if it owes no such one."""
        if not await self.db.aio(self.store.spoken, family, device, message_id):
            return False
        ANNOUNCED.labels("spoken").inc()
        await self._show(family, message_id)
        return True

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SEC)
            try:
                for family, message_id in await self.db.aio(self.store.expire, time.time()):
                    ANNOUNCED.labels("not_spoken").inc()
                    log.info("no home device of %s said %s in time: kept as a note", family, message_id)
                    await self._show(family, message_id)
            except Exception:
                log.exception("giving up announcements past their time failed; trying again")
