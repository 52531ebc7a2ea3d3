"""Outbound WhatsApp messages: one record each, WhatsApp's 24-hour window, Twilio's answer.

Shared by sudo-gateway (the agent's replies and proactive messages, through the
twilio_whatsapp plugin) and sudo-api (held messages released, its own notices). Each message
is claimed under an id before it is sent, so a sender retrying after a crash or a timeout
never sends it twice. Outside the window WhatsApp takes only an approved template: the
message goes as the admin's template, or, with none configured, is held (status `held`) and
shown to the admin until the number writes again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from sudo_core import twilio
from sudo_core.db import Database

WINDOW_SEC = 24 * 3600
"""WhatsApp's customer-service window: free-form messages only this long after the person wrote."""
SEND_TIMEOUT_SEC = 60.0
"""A send silent this long died with its sender: another may take the message over."""


@dataclass(frozen=True)
class Outbound:
    id: str
    family_id: str | None
    number: str
    body: str
    template: bool
    status: str
    sid: str | None
    error: str | None
    attempts: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Result:
    """What happened to one send, for the sender: an HTTP status and the record."""

    status: int
    message: Outbound


def _outbound(row: Any) -> Outbound:
    return Outbound(
        row["id"],
        row["family_id"],
        row["number"],
        row["body"],
        bool(row["template"]),
        row["status"],
        row["sid"],
        row["error"],
        row["attempts"],
        row["created_at"],
        row["updated_at"],
    )


class OutboundStore:
    """Every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(
        self, message_id: str, family: uuid.UUID | None, number: str, body: str
    ) -> tuple[Outbound, bool]:
        """The record of this message, and whether the caller may send it now: it is new, Twilio
        asked for a retry, or an earlier attempt went silent (its sender died mid-send)."""
        now = time.time()
        with self.db.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO whatsapp_outbound (id, family_id, number, body, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'sending', ?, ?)",
                (message_id, str(family) if family else None, number, body, now, now),
            )
            mine = cur.rowcount > 0 or self._take(
                message_id,
                "status = 'retrying' OR (status = 'sending' AND updated_at < ?)",
                (now - SEND_TIMEOUT_SEC,),
            )
        return self.get(message_id), mine  # type: ignore[return-value]

    def release(self, message_id: str) -> bool:
        """Whether the caller takes this held message to send it (no one else will)."""
        return self._take(message_id, "status = 'held'", ())

    def _take(self, message_id: str, condition: str, params: tuple[Any, ...]) -> bool:
        cur = self.db.execute(
            f"UPDATE whatsapp_outbound SET status = 'sending', updated_at = ? WHERE id = ? AND ({condition})",
            (time.time(), message_id, *params),
        )
        return cur.rowcount > 0

    def get(self, message_id: str) -> Outbound | None:
        row = self.db.query_one("SELECT * FROM whatsapp_outbound WHERE id = ?", (message_id,))
        return _outbound(row) if row else None

    def record(
        self,
        message_id: str,
        status: str,
        *,
        sid: str | None = None,
        error: str | None = None,
        template: bool = False,
    ) -> Outbound:
        self.db.execute(
            "UPDATE whatsapp_outbound SET status = ?, sid = coalesce(?, sid), error = ?, template = ?,"
            " attempts = attempts + (? IN ('queued', 'retrying', 'failed')), updated_at = ? WHERE id = ?",
            (status, sid, error, int(template), status, time.time(), message_id),
        )
        return self.get(message_id)  # type: ignore[return-value]

    def in_window(self, number: str, now: float | None = None) -> bool:
        row = self.db.query_one("SELECT max(received_at) FROM whatsapp_inbox WHERE number = ?", (number,))
        return bool(row[0]) and row[0] > (now or time.time()) - WINDOW_SEC

    def held(self, family: uuid.UUID, number: str) -> list[Outbound]:
        """What the family's agent wrote to the number outside the window, oldest first. Only the
        family that links the number now: a number another family linked since is not sent
        what the family that let it go had held for it."""
        rows = self.db.query(
            "SELECT * FROM whatsapp_outbound WHERE number = ? AND family_id = ? AND status = 'held'"
            " ORDER BY created_at",
            (number, str(family)),
        )
        return [_outbound(r) for r in rows]

    def on_status(self, sid: str, status: str, error: str | None) -> bool:
        """Twilio's status callback; a late `sent` never overwrites `delivered` or `read`."""
        rank = "CASE {} WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2"
        rank += " WHEN 'read' THEN 3 ELSE 4 END"
        order, new = rank.format("status"), rank.format("?")
        cur = self.db.execute(
            f"UPDATE whatsapp_outbound SET status = ?, error = coalesce(?, error), updated_at = ?"
            f" WHERE sid = ? AND {order} <= {new}",
            (status, error, time.time(), sid, status),
        )
        return cur.rowcount > 0

    def problems(self, limit: int = 50) -> list[Outbound]:
        """Messages the admin should see: refused, undelivered, held, or still being retried."""
        rows = self.db.query(
            "SELECT * FROM whatsapp_outbound WHERE status IN ('failed', 'undelivered', 'held', 'retrying')"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [_outbound(r) for r in rows]


async def deliver(
    http: aiohttp.ClientSession,
    db: Database,
    account: twilio.Account,
    message: Outbound,
    *,
    replying: bool = False,
) -> Result:
    """Send a claimed message as WhatsApp's window allows, and record what Twilio said.

    `replying`: the number wrote a moment ago (a notice in answer to it), so the window is open.
    """
    store = OutboundStore(db)
    template = not replying and not await db.aio(store.in_window, message.number)
    if template and not account.template_sid:
        held = await db.aio(
            store.record, message.id, "held", error="outside WhatsApp's 24-hour window and no template is set"
        )
        return Result(202, held)
    try:
        answer = await twilio.post_message(
            http,
            account,
            message.number,
            body=None if template else message.body,
            template_text=message.body if template else None,
        )
    except twilio.TwilioError as exc:
        return Result(503, await db.aio(store.record, message.id, "retrying", error=str(exc)))
    if answer.ok:
        status = str(answer.body.get("status") or "queued")
        recorded = await db.aio(
            store.record, message.id, status, sid=answer.body.get("sid"), template=template
        )
        return Result(201, recorded)
    final = answer.status not in twilio.RETRYABLE
    recorded = await db.aio(store.record, message.id, "failed" if final else "retrying", error=answer.error)
    return Result(answer.status, recorded)
