from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sudo_core.db import MIGRATIONS, Database


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "sudo.db")
    yield database
    database.close()


def test_new_database_is_wal_and_migrated(db: Database):
    conn = sqlite3.connect(db.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_newer_schema_is_refused(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Database(tmp_path / "new.db")


def test_families_round_trip_and_are_shared_between_connections(db: Database):
    family = db.create_family("  Smith ")
    other = Database(db.path)
    try:
        assert other.get_family(family.id).name == "Smith"
        assert db.delete_family(family.id)
        assert other.get_family(family.id) is None
    finally:
        other.close()
    with pytest.raises(ValueError):
        db.create_family("   ")


def test_activity_never_moves_backwards(db: Database):
    family = db.create_family("A")
    db.touch_family(family.id, 200.0)
    db.touch_family(family.id, 100.0)
    assert db.get_family(family.id).last_active_at == 200.0


def test_leases_mark_work_in_flight_until_released_or_expired(db: Database):
    family = db.create_family("A")
    lease = db.acquire_lease(family.id, "test", ttl=60)
    assert db.has_active_lease(family.id)
    db.release_lease(lease)
    assert not db.has_active_lease(family.id)
    db.acquire_lease(family.id, "crashed holder", ttl=0.05)
    time.sleep(0.1)
    assert not db.has_active_lease(family.id)


def test_settings_prefix_is_literal(db: Database):
    db.set_setting("llm.model", "m")
    db.set_setting("llmXmodel", "x")
    db.set_setting("llm.api_key", {"nested": [1]})
    assert db.get_settings("llm.") == {"llm.model": "m", "llm.api_key": {"nested": [1]}}
    db.set_setting("llm.model", "n")
    assert db.get_settings("llm.m")["llm.model"] == "n"


async def test_aio_runs_on_the_database_thread(db: Database):
    family = await db.aio(db.create_family, "Async")
    names = await db.aio(lambda: threading.current_thread().name)
    assert names.startswith("sqlite")
    assert (await db.aio(db.get_family, family.id)).name == "Async"


def test_a_database_from_before_members_opens_and_its_accounts_own_their_families(tmp_path: Path):
    """A database at schema 3 (one account per family, one history per family) migrates: each
    family's oldest account becomes its owner, the others adults; the history and the WhatsApp
    numbers become the owner's; sessions stay valid."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 3")
    conn.executescript(
        """
        INSERT INTO families (id, name, created_at) VALUES ('f1', 'The Olds', 1), ('f2', 'Lone', 1);
        INSERT INTO accounts (id, email, password_hash, display_name, family_id, is_admin, created_at)
        VALUES ('a1', 'first@example.org', 'h', 'First', 'f1', 0, 1),
               ('a2', 'second@example.org', 'h', 'Second', 'f1', 0, 2),
               ('a3', 'lone@example.org', 'h', 'Lone', 'f2', 0, 1),
               ('admin', 'root@example.org', 'h', 'Root', NULL, 1, 0);
        INSERT INTO sessions (token_hash, account_id, csrf, created_at, expires_at)
        VALUES ('t1', 'a1', 'c', 1, 9e12);
        INSERT INTO messages (id, family_id, role, sender, text, status, created_at, updated_at)
        VALUES ('m1', 'f1', 'user', 'First', 'hello', 'answered', 1, 1);
        INSERT INTO whatsapp_numbers (id, family_id, number, verified_at, created_at)
        VALUES ('n1', 'f1', '+447700900123', 1, 1);
        """
    )
    conn.commit()
    conn.close()

    db = Database(path)
    try:
        roles = {r["id"]: r["role"] for r in db.query("SELECT id, role FROM accounts")}
        assert roles == {"a1": "owner", "a2": "adult", "a3": "owner", "admin": None}
        assert db.query_one("SELECT account_id FROM messages WHERE id = 'm1'")[0] == "a1"
        assert db.query_one("SELECT account_id FROM whatsapp_numbers WHERE id = 'n1'")[0] == "a1"
        assert db.query_one("SELECT account_id FROM sessions WHERE token_hash = 't1'")[0] == "a1"
        assert db.query("PRAGMA foreign_key_check") == []
        assert db.query_one("PRAGMA foreign_keys")[0] == 1, "foreign keys are back on after migrating"
        # Removing the owner takes their sessions with it: the rebuilt table's keys hold.
        db.execute("DELETE FROM accounts WHERE id = 'a1'")
        assert db.query_one("SELECT count(*) FROM sessions")[0] == 0
    finally:
        db.close()
