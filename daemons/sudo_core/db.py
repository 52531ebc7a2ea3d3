"""The database: families, devices, activity, leases and global settings, in SQLite (WAL).

Every daemon opens the same file. Methods are plain blocking functions; async code calls them
through `Database.aio`, which runs them on the database's own single thread, so the event loop
never blocks on SQLite and one connection is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Append only: a migration, once released, never changes. PRAGMA user_version counts them.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE families (
        id TEXT PRIMARY KEY,               -- uuid, canonical form
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_active_at REAL                -- unix seconds; NULL until first use
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT UNIQUE,
        created_at REAL NOT NULL,
        last_seen_at REAL
    );
    CREATE INDEX devices_family ON devices(family_id);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,               -- JSON
        updated_at REAL NOT NULL
    );
    -- A lease marks a request in flight to a family's runtime; the reaper never evicts a
    -- runtime holding one. Leases expire, so a crashed holder cannot pin a runtime forever.
    CREATE TABLE leases (
        id INTEGER PRIMARY KEY,
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX leases_family ON leases(family_id, expires_at);
    """,
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,       -- argon2id, PHC string
        display_name TEXT NOT NULL,
        family_id TEXT REFERENCES families(id) ON DELETE CASCADE,  -- NULL for an admin-only account
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX accounts_family ON accounts(family_id);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,       -- sha256 of the cookie or bearer token
        account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE messages (
        n INTEGER PRIMARY KEY,             -- order of the family's history
        id TEXT NOT NULL UNIQUE,
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        -- user messages: queued -> delivered -> answered, or failed (retry puts it back to queued)
        status TEXT NOT NULL,
        reply_to TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX messages_family ON messages(family_id, n);
    CREATE INDEX messages_open ON messages(family_id, status) WHERE status IN ('queued', 'delivered');
    -- How far sudo-api has read each family's sudo_chat outbox, and from which agent process.
    CREATE TABLE agent_cursors (
        family_id TEXT PRIMARY KEY REFERENCES families(id) ON DELETE CASCADE,
        boot TEXT,
        seq INTEGER NOT NULL
    );
    CREATE TABLE pairings (
        id TEXT PRIMARY KEY,
        code TEXT NOT NULL UNIQUE,         -- what the family types; short-lived
        token_hash TEXT NOT NULL UNIQUE,   -- the device's token, valid once paired
        name TEXT NOT NULL,
        family_id TEXT REFERENCES families(id) ON DELETE CASCADE,
        device_id TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE whatsapp_numbers (
        id TEXT PRIMARY KEY,
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        number TEXT NOT NULL,              -- E.164
        code_hash TEXT,
        code_expires_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        verified_at REAL,
        created_at REAL NOT NULL,
        UNIQUE (family_id, number)
    );
    -- A number answers to one family only, once verified.
    CREATE UNIQUE INDEX whatsapp_verified ON whatsapp_numbers(number) WHERE verified_at IS NOT NULL;
    """,
    """
    -- Inbound WhatsApp messages of linked numbers, stored before Twilio is answered.
    CREATE TABLE whatsapp_inbox (
        sid TEXT PRIMARY KEY,              -- Twilio's MessageSid: a retried webhook is stored once
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        number TEXT NOT NULL,              -- the sender, E.164
        profile_name TEXT NOT NULL,
        body TEXT NOT NULL,
        media TEXT NOT NULL,               -- JSON [{"url", "type"}]
        status TEXT NOT NULL,              -- received -> delivered (to the plugin), or failed
        error TEXT,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX whatsapp_inbox_open ON whatsapp_inbox(family_id, received_at) WHERE status = 'received';
    CREATE INDEX whatsapp_inbox_number ON whatsapp_inbox(number, received_at);
    -- Every WhatsApp message sent (or held) for a family, as Twilio last reported it.
    CREATE TABLE whatsapp_outbound (
        id TEXT PRIMARY KEY,               -- '<family hex>:<sender's id>': a retried send is sent once
        family_id TEXT REFERENCES families(id) ON DELETE CASCADE,  -- NULL: sudo-api's own notices
        number TEXT NOT NULL,
        body TEXT NOT NULL,
        template INTEGER NOT NULL DEFAULT 0,  -- sent as the template (outside the 24-hour window)
        -- sending, retrying, held, then Twilio's: queued, sent, delivered, read, failed, undelivered
        status TEXT NOT NULL,
        sid TEXT UNIQUE,                   -- Twilio's MessageSid once accepted
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX whatsapp_outbound_status ON whatsapp_outbound(status, updated_at);
    CREATE INDEX whatsapp_outbound_held ON whatsapp_outbound(number) WHERE status = 'held';
    -- Unknown numbers that were told how to link themselves, and when (the reply's rate limit).
    CREATE TABLE whatsapp_strangers (
        number TEXT PRIMARY KEY,
        replied_at REAL NOT NULL
    );
    """,
    """
    -- A family is its members: accounts get a role (owner, adult, child) and children log in by
    -- username, so email may be NULL. SQLite cannot relax NOT NULL in place: the table is
    -- rebuilt (foreign keys are off during migrations). Each family's oldest account owns it.
    CREATE TABLE accounts_new (
        id TEXT PRIMARY KEY,
        email TEXT UNIQUE COLLATE NOCASE,  -- NULL for a child added with a username
        username TEXT UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,       -- argon2id, PHC string
        display_name TEXT NOT NULL,
        family_id TEXT REFERENCES families(id) ON DELETE CASCADE,  -- NULL for an admin-only account
        role TEXT CHECK (role IN ('owner', 'adult', 'child')),     -- NULL exactly when no family
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        CHECK (email IS NOT NULL OR username IS NOT NULL),
        CHECK ((family_id IS NULL) = (role IS NULL))
    );
    INSERT INTO accounts_new (id, email, username, password_hash, display_name, family_id, role,
                              is_admin, created_at)
        SELECT a.id, a.email, NULL, a.password_hash, a.display_name, a.family_id,
               CASE WHEN a.family_id IS NULL THEN NULL
                    WHEN a.id = (SELECT b.id FROM accounts b WHERE b.family_id = a.family_id
                                 ORDER BY b.created_at, b.id LIMIT 1) THEN 'owner'
                    ELSE 'adult' END,
               a.is_admin, a.created_at
        FROM accounts a;
    DROP TABLE accounts;
    ALTER TABLE accounts_new RENAME TO accounts;
    CREATE INDEX accounts_family ON accounts(family_id);
    -- One owner per family.
    CREATE UNIQUE INDEX accounts_owner ON accounts(family_id) WHERE role = 'owner';
    ALTER TABLE families ADD COLUMN disabled_at REAL;
    ALTER TABLE sessions ADD COLUMN last_seen_at REAL;
    ALTER TABLE sessions ADD COLUMN user_agent TEXT;
    ALTER TABLE sessions ADD COLUMN address TEXT;
    CREATE INDEX sessions_account ON sessions(account_id);
    -- Each member has their own thread with the family's agent; the old history is the owner's.
    ALTER TABLE messages ADD COLUMN account_id TEXT REFERENCES accounts(id) ON DELETE CASCADE;
    UPDATE messages SET account_id =
        (SELECT id FROM accounts WHERE accounts.family_id = messages.family_id AND role = 'owner');
    CREATE INDEX messages_thread ON messages(family_id, account_id, n);
    -- A WhatsApp number belongs to the member who linked it.
    ALTER TABLE whatsapp_numbers ADD COLUMN account_id TEXT REFERENCES accounts(id) ON DELETE CASCADE;
    UPDATE whatsapp_numbers SET account_id =
        (SELECT id FROM accounts WHERE accounts.family_id = whatsapp_numbers.family_id AND role = 'owner');
    -- Invitations by link: single use, expiring, revocable. family_id NULL: the admin invites
    -- someone to sign up a new family (sign-up mode `invite`).
    CREATE TABLE invitations (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,   -- sha256 of the link's token
        family_id TEXT REFERENCES families(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('owner', 'adult')),
        created_by TEXT REFERENCES accounts(id) ON DELETE SET NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        revoked_at REAL
    );
    CREATE INDEX invitations_family ON invitations(family_id);
    -- Password reset links: single use, valid an hour.
    CREATE TABLE password_resets (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        issued_by TEXT,                    -- a member's id; 'whatsapp': a code sent there; NULL: the admin
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    """,
    """
    -- Tokens each family's agent used a day (UTC), as the provider counted them.
    CREATE TABLE usage_daily (
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        day TEXT NOT NULL,                 -- YYYY-MM-DD, UTC
        tokens_in INTEGER NOT NULL DEFAULT 0,
        tokens_out INTEGER NOT NULL DEFAULT 0,
        answers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (family_id, day)
    );
    """,
    """
    -- The size of each family's data volume, as the reaper last had it measured.
    CREATE TABLE volume_sizes (
        family_id TEXT PRIMARY KEY REFERENCES families(id) ON DELETE CASCADE,
        bytes INTEGER NOT NULL,
        quota INTEGER NOT NULL,            -- runtime.volume_quota when measured
        measured_at REAL NOT NULL
    );
    """,
    """
    -- A pairing code typed by a family claims the device (family_id set) and gets a second code
    -- the device says aloud with the family's name; typed back, it makes the device (device_id).
    ALTER TABLE pairings ADD COLUMN confirm_code TEXT;
    ALTER TABLE pairings ADD COLUMN confirm_tries INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- Whether the device said, at its last heartbeat, that the family muted its microphone.
    ALTER TABLE devices ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- The family's Home thread: what its shared home devices heard and answered by voice, which
    -- every member reads (account_id NULL: no member's own). Stored answered: never delivered.
    ALTER TABLE messages ADD COLUMN home INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_home ON messages(family_id, n) WHERE home = 1;
    """,
    """
    -- What the agent says out loud at home (its sudo_voice platform) is a Home thread message,
    -- status to_speak until a home device said it (spoken), or not_spoken when none did. One
    -- row per home device online when it came, until that device's room said it or it expired.
    CREATE TABLE announcements (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        family_id TEXT NOT NULL REFERENCES families(id) ON DELETE CASCADE,
        expires_at REAL NOT NULL,
        PRIMARY KEY (device_id, message_id)
    );
    CREATE INDEX announcements_message ON announcements(message_id);
    CREATE INDEX announcements_expiry ON announcements(expires_at);
    CREATE INDEX messages_to_speak ON messages(status) WHERE status = 'to_speak';
    """,
    """
    -- Full-text search of the messages (sudo_api/search.py): an FTS5 index over messages.text,
    -- its content read from messages itself (external content: the text is stored once), kept in
    -- step by the triggers below (deletes cascaded from an account or a family fire them too),
    -- and built from the rows already there. unicode61 folds case and accents: cafe finds café.
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        text, content = 'messages', content_rowid = 'n', tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, text) VALUES (new.n, new.text);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.n, old.text);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.n, old.text);
        INSERT INTO messages_fts (rowid, text) VALUES (new.n, new.text);
    END;
    INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
    """,
    """
    -- Web Push (sudo_api/push.py): each browser a member subscribed (its push service's endpoint,
    -- the browser's P-256 key and auth secret), and what each member wants to be told (no row:
    -- everything). Both go with the member's account.
    CREATE TABLE push_subscriptions (
        endpoint TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        p256dh TEXT NOT NULL,
        auth TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX push_subscriptions_account ON push_subscriptions(account_id);
    CREATE TABLE push_preferences (
        account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        replies INTEGER NOT NULL,          -- the agent's answers
        proactive INTEGER NOT NULL         -- what the agent says first (a reminder)
    );
    """,
    """
    -- A photo or voice note sent with a member's message (sudo_api/media.py): its media type
    -- and size. The file itself is on the family's volume, kept by the sudo_chat plugin.
    ALTER TABLE messages ADD COLUMN media_type TEXT;
    ALTER TABLE messages ADD COLUMN media_bytes INTEGER;
    """,
)


@dataclass(frozen=True)
class Family:
    id: uuid.UUID
    name: str
    created_at: float
    last_active_at: float | None
    disabled_at: float | None = None


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn = self._executor.submit(self._open).result()

    def _open(self) -> sqlite3.Connection:
        # SQLite creates its files 0644 (its WAL and shared-memory files copy the database's
        # mode). The daemons sharing this database run as different users of one group, so the
        # file is made first, group-writable as far as the umask allows.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660))
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
        return conn

    async def aio(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this object's methods on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.submit(self._conn.close).result()
        self._executor.shutdown()

    # For the stores of other daemons (sudo-api's accounts, chat, devices): call on the db thread.

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; takes the write lock up front so no reader upgrade can deadlock."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # Families

    def create_family(self, name: str, family_id: uuid.UUID | None = None) -> Family:
        if not name.strip():
            raise ValueError("family name must not be empty")
        family = Family(family_id or uuid.uuid4(), name.strip(), time.time(), None)
        self._conn.execute(
            "INSERT INTO families (id, name, created_at) VALUES (?, ?, ?)",
            (str(family.id), family.name, family.created_at),
        )
        return family

    def get_family(self, family_id: uuid.UUID) -> Family | None:
        row = self._conn.execute("SELECT * FROM families WHERE id = ?", (str(family_id),)).fetchone()
        return _family(row) if row else None

    def list_families(self) -> list[Family]:
        return [_family(r) for r in self._conn.execute("SELECT * FROM families ORDER BY created_at")]

    def member_counts(self) -> dict[uuid.UUID, int]:
        rows = self._conn.execute(
            "SELECT family_id, count(*) FROM accounts WHERE family_id IS NOT NULL GROUP BY family_id"
        )
        return {uuid.UUID(r[0]): r[1] for r in rows}

    def delete_family(self, family_id: uuid.UUID) -> bool:
        cur = self._conn.execute("DELETE FROM families WHERE id = ?", (str(family_id),))
        return cur.rowcount > 0

    def touch_family(self, family_id: uuid.UUID, at: float | None = None) -> None:
        """Record activity; never moves last_active_at backwards."""
        self._conn.execute(
            "UPDATE families SET last_active_at = max(coalesce(last_active_at, 0), ?) WHERE id = ?",
            (at if at is not None else time.time(), str(family_id)),
        )

    # Leases: requests in flight

    def acquire_lease(self, family_id: uuid.UUID, holder: str, ttl: float) -> int:
        cur = self._conn.execute(
            "INSERT INTO leases (family_id, holder, expires_at) VALUES (?, ?, ?)",
            (str(family_id), holder, time.time() + ttl),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def release_lease(self, lease_id: int) -> None:
        self._conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def has_active_lease(self, family_id: uuid.UUID) -> bool:
        now = time.time()
        self._conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        row = self._conn.execute(
            "SELECT 1 FROM leases WHERE family_id = ? AND expires_at > ? LIMIT 1",
            (str(family_id), now),
        ).fetchone()
        return row is not None

    # Global settings (admin-set; JSON values)

    def get_settings(self, prefix: str = "") -> dict[str, Any]:
        rows = self._conn.execute(
            "SELECT key, value FROM settings WHERE key LIKE ? ESCAPE '\\'",
            (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
        )
        return {r["key"]: json.loads(r["value"]) for r in rows}

    def set_setting(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, json.dumps(value), time.time()),
        )


def _family(row: sqlite3.Row) -> Family:
    return Family(
        uuid.UUID(row["id"]), row["name"], row["created_at"], row["last_active_at"], row["disabled_at"]
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this database has not seen, each in its own transaction.

    Foreign keys are off meanwhile (SQLite's way to rebuild a table: dropping the old one must
    not cascade), and checked before each commit.
    """
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this software knows "
            f"({len(MIGRATIONS)}): upgrade sudo before using this database"
        )
    conn.execute("PRAGMA foreign_keys=OFF")
    for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another daemon may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            broken = conn.execute("PRAGMA foreign_key_check").fetchone()
            if broken:
                raise RuntimeError(f"migration {version} breaks a foreign key: {tuple(broken)}")
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.execute("PRAGMA foreign_keys=ON")


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]}")
    return statements
