"""What each family's agent costs the host.

Tokens in and out a day (UTC), as the provider counted them in its answers' `usage`:
sudo-gateway adds each answer's; the families see theirs on /family, the admin every family's on
/admin; past the admin's daily budget (host setting `llm.daily_tokens`, tokens in and out
together, per family) the gateway answers for the agent that the day's share is spent.

The size of its data volume, measured by the reaper through the provisioner: past
`runtime.volume_quota`, sudo-api tells the family and holds its new messages back.

Every function runs on the database thread."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sudo_core.db import Database


@dataclass(frozen=True)
class Day:
    day: str
    tokens_in: int
    tokens_out: int
    answers: int

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def add(db: Database, family: uuid.UUID, tokens_in: int, tokens_out: int, day: str | None = None) -> None:
    db.execute(
        "INSERT INTO usage_daily (family_id, day, tokens_in, tokens_out, answers) VALUES (?, ?, ?, ?, 1)"
        " ON CONFLICT (family_id, day) DO UPDATE SET tokens_in = tokens_in + excluded.tokens_in,"
        " tokens_out = tokens_out + excluded.tokens_out, answers = answers + 1",
        (str(family), day or today(), tokens_in, tokens_out),
    )


def of_family(db: Database, family: uuid.UUID, days: int = 7) -> list[Day]:
    """The family's last `days` days that had any use, newest first."""
    rows = db.query(
        "SELECT * FROM usage_daily WHERE family_id = ? AND day >= ? ORDER BY day DESC",
        (str(family), today(time.time() - (days - 1) * 86400)),
    )
    return [Day(r["day"], r["tokens_in"], r["tokens_out"], r["answers"]) for r in rows]


def on(db: Database, day: str | None = None) -> dict[uuid.UUID, Day]:
    """Every family's use of one day (today by default)."""
    rows = db.query("SELECT * FROM usage_daily WHERE day = ?", (day or today(),))
    return {
        uuid.UUID(r["family_id"]): Day(r["day"], r["tokens_in"], r["tokens_out"], r["answers"]) for r in rows
    }


def budget(db: Database) -> int | None:
    """The admin's daily budget of tokens per family; None: no budget."""
    value = db.get_settings("llm.daily_tokens").get("llm.daily_tokens")
    return int(value) if value else None


def spent_budget(db: Database, family: uuid.UUID) -> int | None:
    """The budget, if the family has used all of it today (one read on the gateway's hot path)."""
    limit = budget(db)
    if limit is None:
        return None
    row = db.query_one(
        "SELECT tokens_in + tokens_out FROM usage_daily WHERE family_id = ? AND day = ?",
        (str(family), today()),
    )
    return limit if row and row[0] >= limit else None


@dataclass(frozen=True)
class Volume:
    """A family's data volume as last measured, with the quota the provisioner held it to."""

    bytes: int
    quota: int
    measured_at: float

    @property
    def over_quota(self) -> bool:
        return self.bytes > self.quota


def record_volumes(db: Database, sizes: dict[uuid.UUID, int], quota: int, at: float) -> None:
    """The measured sizes of the families' volumes (a volume whose family is gone is skipped)."""
    with db.transaction():
        for family, size in sizes.items():
            db.execute(
                "INSERT INTO volume_sizes (family_id, bytes, quota, measured_at)"
                " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM families WHERE id = ?)"
                " ON CONFLICT (family_id) DO UPDATE SET bytes = excluded.bytes, quota = excluded.quota,"
                " measured_at = excluded.measured_at",
                (str(family), size, quota, at, str(family)),
            )


def _volume(row: Any) -> Volume:
    return Volume(row["bytes"], row["quota"], row["measured_at"])


def volumes(db: Database) -> dict[uuid.UUID, Volume]:
    return {uuid.UUID(r["family_id"]): _volume(r) for r in db.query("SELECT * FROM volume_sizes")}


def volume_of(db: Database, family: uuid.UUID) -> Volume | None:
    row = db.query_one("SELECT * FROM volume_sizes WHERE family_id = ?", (str(family),))
    return _volume(row) if row else None


def size_text(size: int) -> str:
    """Bytes as a person reads them: 980 KB, 3.2 MB, 5.0 GB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{max(size // 1024, 1) if size else 0} KB"
