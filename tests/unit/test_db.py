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
