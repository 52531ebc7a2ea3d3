"""WhatsApp numbers linked to a family, each proven by a code sent to it.

A member adds their number; a six-digit code goes to that number over WhatsApp; the number is
linked once the code comes back, and belongs to that member (what they write reaches the agent
as theirs). A verified number belongs to one family only: that is how an
inbound WhatsApp message finds its family. Only the code's hash is stored, it expires, and it
allows a few attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sudo_core import twilio
from sudo_core.db import Database

from .limits import Limiter

CODE_TTL_SEC = 600
CODE_ATTEMPTS = 5
PER_FAMILY = 10


class NumberError(ValueError):
    """A bad number or code; the message is for the person typing."""


@dataclass(frozen=True)
class Number:
    id: str
    number: str
    verified: bool
    created_at: float
    member_id: str | None
    member_name: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def clean_number(text: str) -> str:
    number = re.sub(r"[\s().-]", "", text.removeprefix("whatsapp:"))
    if not twilio.E164.match(number):
        raise NumberError("enter the number in international form, such as +14155550100")
    return number


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _number(row: sqlite3.Row) -> Number:
    return Number(
        row["id"],
        row["number"],
        row["verified_at"] is not None,
        row["created_at"],
        row["account_id"],
        row["member_name"],
    )


NUMBER_ROWS = (
    "SELECT n.*, a.display_name AS member_name FROM whatsapp_numbers n"
    " LEFT JOIN accounts a ON a.id = n.account_id"
)


class Numbers:
    """Every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, family: uuid.UUID) -> list[Number]:
        rows = self.db.query(f"{NUMBER_ROWS} WHERE n.family_id = ? ORDER BY n.created_at", (str(family),))
        return [_number(r) for r in rows]

    def start(self, family: uuid.UUID, member: uuid.UUID, number: str) -> tuple[Number, str]:
        """Record the member's number as unverified with a fresh code; returns the code to send."""
        code = f"{secrets.randbelow(10**6):06d}"
        now = time.time()
        with self.db.transaction():
            taken = self.db.query_one(
                "SELECT family_id FROM whatsapp_numbers WHERE number = ? AND verified_at IS NOT NULL",
                (number,),
            )
            if taken:
                raise NumberError(
                    "this number is already linked"
                    + ("" if taken["family_id"] == str(family) else " to another family")
                )
            count = self.db.query_one(
                "SELECT count(*) FROM whatsapp_numbers WHERE family_id = ?", (str(family),)
            )[0]
            row = self.db.query_one(
                "SELECT id, account_id FROM whatsapp_numbers WHERE family_id = ? AND number = ?",
                (str(family), number),
            )
            if row is not None and row["account_id"] != str(member):
                raise NumberError("another member of your family is linking this number")
            if row is None and count >= PER_FAMILY:
                raise NumberError(f"a family links at most {PER_FAMILY} numbers")
            number_id = row["id"] if row else uuid.uuid4().hex
            self.db.execute(
                "INSERT INTO whatsapp_numbers (id, family_id, account_id, number, code_hash, code_expires_at,"
                " attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT(id) DO UPDATE SET"
                " code_hash = excluded.code_hash, code_expires_at = excluded.code_expires_at, attempts = 0",
                (number_id, str(family), str(member), number, _hash(code), now + CODE_TTL_SEC, now),
            )
        return self.get(family, number_id), code  # type: ignore[return-value]

    def get(self, family: uuid.UUID, number_id: str) -> Number | None:
        row = self.db.query_one(f"{NUMBER_ROWS} WHERE n.id = ? AND n.family_id = ?", (number_id, str(family)))
        return _number(row) if row else None

    def verify(self, family: uuid.UUID, member: uuid.UUID, number_id: str, code: str) -> Number:
        row = self.db.query_one(
            f"{NUMBER_ROWS} WHERE n.id = ? AND n.family_id = ? AND n.account_id = ?",
            (number_id, str(family), str(member)),
        )
        if row is None:
            raise LookupError("no number of yours with this id")
        if row["verified_at"] is not None:
            return _number(row)
        if row["code_hash"] is None or row["code_expires_at"] < time.time():
            raise NumberError("the code expired: add the number again for a new one")
        # Counted before the comparison, in its own statement: every guess costs one attempt.
        cur = self.db.execute(
            "UPDATE whatsapp_numbers SET attempts = attempts + 1 WHERE id = ? AND attempts < ?",
            (number_id, CODE_ATTEMPTS),
        )
        if cur.rowcount == 0:
            raise NumberError("too many wrong codes: add the number again for a new one")
        if not hmac.compare_digest(_hash(code.strip()), row["code_hash"]):
            raise NumberError("wrong code")
        try:
            self.db.execute(
                "UPDATE whatsapp_numbers SET verified_at = ?, code_hash = NULL WHERE id = ?",
                (time.time(), number_id),
            )
        except sqlite3.IntegrityError:
            raise NumberError("this number was just linked to another family") from None
        return self.get(family, number_id)  # type: ignore[return-value]

    def member_of(self, number: str) -> uuid.UUID | None:
        """The member whose verified number this is."""
        row = self.db.query_one(
            "SELECT account_id FROM whatsapp_numbers WHERE number = ? AND verified_at IS NOT NULL", (number,)
        )
        return uuid.UUID(row["account_id"]) if row and row["account_id"] else None

    def remove(self, family: uuid.UUID, number_id: str, member: uuid.UUID | None) -> bool:
        """Unlink a number: the member's own, or (member None: a parent) any of the family's.
        What the family's agent had held for it (outside WhatsApp's window) is dropped too."""
        owner = str(member) if member else None
        with self.db.transaction():
            row = self.db.query_one(
                "SELECT number FROM whatsapp_numbers WHERE id = ? AND family_id = ?"
                " AND (? IS NULL OR account_id = ?)",
                (number_id, str(family), owner, owner),
            )
            if row is None:
                return False
            self.db.execute(
                "DELETE FROM whatsapp_outbound WHERE family_id = ? AND number = ? AND status = 'held'",
                (str(family), row["number"]),
            )
            self.db.execute("DELETE FROM whatsapp_numbers WHERE id = ?", (number_id,))
        return True


async def link_number(
    numbers: Numbers, codes: Limiter, family: uuid.UUID, member: uuid.UUID, text: str
) -> Number:
    """The member adds their number: it is recorded unverified and a code is sent to it over
    WhatsApp, for `Numbers.verify`. Sends are limited per number (`RateLimited`); a bad number is
    a `NumberError`; if Twilio fails (`twilio.TwilioError`), a number new to the family is
    forgotten again."""
    number = clean_number(text)
    codes.reserve("this number was sent too many codes", number=number)
    db = numbers.db
    existed = any(n.number == number for n in await db.aio(numbers.list, family))
    record, code = await db.aio(numbers.start, family, member, number)
    settings = await db.aio(db.get_settings, "twilio.")
    try:
        await twilio.send_whatsapp(
            settings, number, f"Your Sudo code is {code}. It links this number to your family."
        )
    except twilio.TwilioError:
        if not existed:
            await db.aio(numbers.remove, family, record.id, member)
        raise
    return record
