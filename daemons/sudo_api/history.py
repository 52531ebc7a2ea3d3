"""The family's history in SQLite: the members' threads, the Home thread, and the cursor of each
agent's durable outbox, stored in the same transaction as the messages it brought."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sudo_core.db import Database

from .announcements import AnnouncementStore
from .markdown import to_html
from .media import Upload


@dataclass(frozen=True)
class Message:
    id: str
    n: int
    account_id: str | None
    """The member whose thread it is in; None in the Home thread."""
    home: bool
    """In the family's Home thread (a voice turn), which every member reads."""
    role: str
    sender: str
    text: str
    status: str
    reply_to: str | None
    error: str | None
    created_at: float
    updated_at: float
    media_type: str | None = None
    """A photo's or voice note's media type (a member's message); its file is on the volume."""
    media_bytes: int | None = None

    @property
    def html(self) -> str | None:
        """The agent's Markdown as clean HTML; None for a member's words, which stay plain text."""
        return to_html(self.text) if self.role == "assistant" else None

    @property
    def media_url(self) -> str | None:
        """Where its sender (only they) fetches its photo or voice note through /v1."""
        return f"/v1/chat/media/{self.id}" if self.media_type else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"html": self.html, "media_url": self.media_url}


def _message(row: Any) -> Message:
    return Message(
        row["id"],
        row["n"],
        row["account_id"],
        bool(row["home"]),
        row["role"],
        row["sender"],
        row["text"],
        row["status"],
        row["reply_to"],
        row["error"],
        row["created_at"],
        row["updated_at"],
        row["media_type"],
        row["media_bytes"],
    )


class ChatStore:
    """The history in SQLite; every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.announcements = AnnouncementStore(db)

    def add_user_message(
        self,
        family: uuid.UUID,
        member: uuid.UUID,
        text: str,
        sender: str,
        message_id: str | None = None,
        media: Upload | None = None,
    ) -> Message:
        now = time.time()
        message_id = message_id or uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO messages (id, family_id, account_id, role, sender, text, status, created_at,"
            " updated_at, media_type, media_bytes) VALUES (?, ?, ?, 'user', ?, ?, 'queued', ?, ?, ?, ?)",
            (
                message_id,
                str(family),
                str(member),
                sender,
                text,
                now,
                now,
                media.type if media else None,
                len(media.data) if media else None,
            ),
        )
        self.db.touch_family(family, now)  # a family talking is a family active: no reaping
        return self.get(family, message_id)  # type: ignore[return-value]

    def get(self, family: uuid.UUID, message_id: str) -> Message | None:
        row = self.db.query_one(
            "SELECT * FROM messages WHERE id = ? AND family_id = ?", (message_id, str(family))
        )
        return _message(row) if row else None

    def media_type_of(self, family: uuid.UUID, member: uuid.UUID, message_id: str) -> str | None:
        """The media type of a file the member sent with a message of their own thread; None for
        any other message (another member's, the Home thread's, one with no file)."""
        row = self.db.query_one(
            "SELECT media_type FROM messages WHERE id = ? AND family_id = ? AND account_id = ?"
            " AND role = 'user'",
            (message_id, str(family), str(member)),
        )
        return row["media_type"] if row else None

    def add_voice_turn(
        self, family: uuid.UUID, device: uuid.UUID, heard: str, answered: str
    ) -> list[Message] | None:
        """What a home device heard and the agent answered out loud, in the Home thread, sent by
        the device's name. None: the device is not (or no longer) the family's."""
        with self.db.transaction():
            row = self.db.query_one(
                "SELECT name FROM devices WHERE id = ? AND family_id = ?", (str(device), str(family))
            )
            if row is None:
                return None
            now, heard_id, answer_id = time.time(), uuid.uuid4().hex, uuid.uuid4().hex
            insert = (
                "INSERT INTO messages (id, family_id, account_id, home, role, sender, text, status,"
                " reply_to, created_at, updated_at) VALUES (?, ?, NULL, 1, ?, ?, ?, ?, ?, ?, ?)"
            )
            self.db.execute(
                insert, (heard_id, str(family), "user", row["name"], heard, "answered", None, now, now)
            )
            self.db.execute(
                insert,
                (answer_id, str(family), "assistant", "assistant", answered, "final", heard_id, now, now),
            )
        return [self.get(family, heard_id), self.get(family, answer_id)]  # type: ignore[list-item]

    def history(
        self, family: uuid.UUID, member: uuid.UUID | None, before: int | None, limit: int
    ) -> list[Message]:
        """A member's own thread; None: the family's Home thread."""
        before = before if before is not None else 2**62
        if member is None:
            rows = self.db.query(
                "SELECT * FROM messages WHERE family_id = ? AND home = 1 AND n < ? ORDER BY n DESC LIMIT ?",
                (str(family), before, limit),
            )
        else:
            rows = self.db.query(
                "SELECT * FROM messages WHERE family_id = ? AND account_id = ? AND n < ?"
                " ORDER BY n DESC LIMIT ?",
                (str(family), str(member), before, limit),
            )
        return [_message(r) for r in reversed(rows)]

    def around(
        self, family: uuid.UUID, member: uuid.UUID | None, message_id: str, each_side: int
    ) -> tuple[list[Message], bool, bool] | None:
        """A message of the member's own thread (None: of the Home thread) with up to `each_side`
        messages before and after it, and whether there are older and newer ones past those.
        None: no such message in that thread."""
        thread, params = (
            ("home = 1", (str(family),)) if member is None else ("account_id = ?", (str(family), str(member)))
        )
        where = f"family_id = ? AND {thread}"
        row = self.db.query_one(f"SELECT n FROM messages WHERE {where} AND id = ?", (*params, message_id))
        if row is None:
            return None
        older = self.db.query(
            f"SELECT * FROM messages WHERE {where} AND n < ? ORDER BY n DESC LIMIT ?",
            (*params, row["n"], each_side + 1),
        )
        newer = self.db.query(
            f"SELECT * FROM messages WHERE {where} AND n >= ? ORDER BY n LIMIT ?",
            (*params, row["n"], each_side + 2),
        )
        shown = [*reversed(older[:each_side]), *newer[: each_side + 1]]
        return [_message(r) for r in shown], len(older) > each_side, len(newer) > each_side + 1

    def open_messages(self, family: uuid.UUID) -> list[Message]:
        rows = self.db.query(
            "SELECT * FROM messages WHERE family_id = ? AND status IN ('queued', 'delivered') ORDER BY n",
            (str(family),),
        )
        return [_message(r) for r in rows]

    def families_with_open_messages(self) -> list[uuid.UUID]:
        rows = self.db.query(
            "SELECT DISTINCT family_id FROM messages WHERE status IN ('queued', 'delivered')"
        )
        return [uuid.UUID(r["family_id"]) for r in rows]

    def set_status(self, message_id: str, status: str, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE messages SET status = ?, error = ?, updated_at = ? WHERE id = ?",
            (status, error, time.time(), message_id),
        )

    def next_to_deliver(self, family: uuid.UUID) -> tuple[Message | None, bool]:
        """The message in flight (False), else the oldest queued one, marked delivered (True).

        Marked before it is handed over, so the answer can never arrive first.
        """
        for message in self.open_messages(family):
            if message.status == "delivered":
                return message, False
            self.db.execute(
                "UPDATE messages SET status = 'delivered', attempts = attempts + 1, updated_at = ?"
                " WHERE id = ?",
                (time.time(), message.id),
            )
            return message, True
        return None, False

    def unmark_delivered(self, message_id: str) -> None:
        self.db.execute(
            "UPDATE messages SET status = 'queued', attempts = attempts - 1"
            " WHERE id = ? AND status = 'delivered'",
            (message_id,),
        )

    def fail_open(self, family: uuid.UUID, error: str) -> list[Message]:
        failed = self.open_messages(family)
        for message in failed:
            self.set_status(message.id, "failed", error)
        return [self.get(family, m.id) for m in failed]  # type: ignore[misc]

    def retry(self, family: uuid.UUID, member: uuid.UUID, message_id: str) -> Message | None:
        cur = self.db.execute(
            "UPDATE messages SET status = 'queued', error = NULL, attempts = 0, updated_at = ?"
            " WHERE id = ? AND family_id = ? AND account_id = ? AND role = 'user' AND status = 'failed'",
            (time.time(), message_id, str(family), str(member)),
        )
        return self.get(family, message_id) if cur.rowcount else None

    def speaker(self, member: str | None) -> tuple[str, str] | None:
        """The name and role of a thread's member, as the agent is told them; None once removed."""
        row = self.db.query_one("SELECT display_name, role FROM accounts WHERE id = ?", (member,))
        return (row["display_name"], row["role"]) if row else None

    def thread_of(self, family: uuid.UUID, message_id: str | None, chat: Any = None) -> str | None:
        """Whose thread an agent's event belongs in: the message it answers decides; a message of
        its own (a reminder) goes to the member its chat names, else to the family's owner. None:
        the member is gone (removed while their turn ran)."""
        if message_id:
            row = self.db.query_one(
                "SELECT account_id FROM messages WHERE id = ? AND family_id = ?", (message_id, str(family))
            )
            return row["account_id"] if row else None
        row = self.db.query_one(
            "SELECT id FROM accounts WHERE family_id = ? AND (id = ? OR role = 'owner')"
            " ORDER BY id = ? DESC LIMIT 1",
            (str(family), str(chat), str(chat)),
        )
        return row["id"] if row else None

    def reply_text(self, family: uuid.UUID, message_id: str) -> str:
        """The agent's words answering a message (a turn may write several messages)."""
        rows = self.db.query(
            "SELECT text FROM messages WHERE family_id = ? AND reply_to = ? AND role = 'assistant'"
            " ORDER BY n",
            (str(family), message_id),
        )
        return "\n\n".join(r["text"] for r in rows)

    # The plugin's outbox

    def cursor(self, family: uuid.UUID) -> tuple[str | None, int]:
        row = self.db.query_one("SELECT boot, seq FROM agent_cursors WHERE family_id = ?", (str(family),))
        return (row["boot"], row["seq"]) if row else (None, 0)

    def _set_cursor(self, family: uuid.UUID, boot: str | None, seq: int) -> None:
        self.db.execute(
            "INSERT INTO agent_cursors (family_id, boot, seq) VALUES (?, ?, ?) ON CONFLICT(family_id)"
            " DO UPDATE SET boot = coalesce(excluded.boot, boot), seq = excluded.seq",
            (str(family), boot, seq),
        )

    def new_agent_process(
        self, family: uuid.UUID, boot: str, outbox_seq: int, max_attempts: int
    ) -> tuple[list[Message], list[Message], int]:
        """The plugin answered from a process we have not seen: deliver again what it lost.

        Returns (requeued, failed, cursor). An outbox behind our cursor was recreated (a purged
        volume): read it from the start.
        """
        requeued, failed = [], []
        with self.db.transaction():
            _, seq = self.cursor(family)
            if outbox_seq < seq:
                seq = 0
            self._set_cursor(family, boot, seq)
            for message in self.open_messages(family):
                if message.status != "delivered":
                    continue
                attempts = self.db.query_one("SELECT attempts FROM messages WHERE id = ?", (message.id,))[0]
                if attempts >= max_attempts:
                    self.set_status(message.id, "failed", "the assistant restarted while answering")
                    failed.append(message.id)
                else:
                    self.set_status(message.id, "queued")
                    requeued.append(message.id)
        return (
            [self.get(family, i) for i in requeued],  # type: ignore[misc]
            [self.get(family, i) for i in failed],  # type: ignore[misc]
            seq,
        )

    def apply(
        self, family: uuid.UUID, event: dict[str, Any], speakers: Sequence[uuid.UUID] = ()
    ) -> list[Message]:
        """Store one durable outbox event with its cursor; returns the messages it changed. A
        message to be said out loud (`speak`, from sudo_voice) goes to the Home thread, for the
        `speakers` to say: the family's home devices online now."""
        changed: list[str] = []
        with self.db.transaction():
            kind, now = event["type"], time.time()
            thread = self.thread_of(family, event.get("reply_to"), event.get("chat"))
            if kind == "message" and event.get("speak"):
                at = event.get("at")
                said_at = min(float(at), now) if isinstance(at, int | float) else now
                if self.announcements.add(family, event["id"], str(event["text"]), said_at, speakers):
                    changed.append(event["id"])
            elif kind == "message" and thread:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO messages (id, family_id, account_id, role, sender, text, status,"
                    " reply_to, created_at, updated_at)"
                    " VALUES (?, ?, ?, 'assistant', 'assistant', ?, 'final', ?, ?, ?)",
                    (event["id"], str(family), thread, str(event["text"]), event.get("reply_to"), now, now),
                )
                if cur.rowcount:
                    changed.append(event["id"])
            elif kind == "edit":
                cur = self.db.execute(
                    "UPDATE messages SET text = ?, updated_at = ? WHERE id = ? AND family_id = ?",
                    (str(event["text"]), now, event["id"], str(family)),
                )
                if cur.rowcount:
                    changed.append(event["id"])
            elif kind == "turn_done" and event.get("reply_to"):
                replied = self.db.query_one(
                    "SELECT 1 FROM messages WHERE reply_to = ? AND family_id = ?",
                    (event["reply_to"], str(family)),
                )
                ok = event.get("outcome") == "success" or replied
                cur = self.db.execute(
                    "UPDATE messages SET status = ?, error = ?, updated_at = ?"
                    " WHERE id = ? AND family_id = ? AND status IN ('queued', 'delivered')",
                    (
                        "answered" if ok else "failed",
                        None if ok else "the assistant could not answer",
                        now,
                        event["reply_to"],
                        str(family),
                    ),
                )
                if cur.rowcount:
                    changed.append(event["reply_to"])
            self._set_cursor(family, None, int(event["seq"]))
        return [m for m in (self.get(family, i) for i in changed) if m]
