"""What the reliability suite's tests share beyond fixtures: the bounded or full size of a try,
the roles of the authorization matrix and the fuzzers, the database compared before and after
requests that were refused, and a relay of the Docker engine's socket. (A module of its own:
every suite's conftest is named `conftest`, so which one `from conftest import` finds would
depend on what else runs.)"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane import Family
from figures import FULL
from stack import wait_for

HERE = Path(__file__).resolve().parent


def size(bounded: int, full: int) -> int:
    """How many of something to try: `bounded` by default, `full` under SUDO_RELIABILITY=full."""
    return full if FULL else bounded


# The roles of the authorization matrix and the fuzzers.


@dataclass
class Roles:
    """Family A's owner, an adult and a child of A, a member A's owner removed, a member of a
    family the admin disabled, family B's owner, a paired device of A, the admin and the voice
    bridge's service token."""

    a: Family
    adult: Family
    child: Family
    removed: Family
    disabled: Family
    b: Family
    device_id: str
    device_token: str
    admin: dict[str, str]
    service: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {
            "anonymous": {},
            "family_a": self.a.headers,
            "adult_a": self.adult.headers,
            "child_a": self.child.headers,
            "removed_a": self.removed.headers,
            "disabled_c": self.disabled.headers,
            "family_b": self.b.headers,
            "device_a": {"Authorization": f"Bearer {self.device_token}"},
            "admin": self.admin,
            "service": self.service,
        }[role]


ROLES = (
    "anonymous",
    "family_a",
    "adult_a",
    "child_a",
    "removed_a",
    "disabled_c",
    "family_b",
    "device_a",
    "admin",
    "service",
)


# The database, compared before and after requests that were refused.

VOLATILE = {
    "families": {"last_active_at"},
    "devices": {"last_seen_at", "muted"},  # both kept from the beats, flushed every heartbeat_flush_sec
    "sessions": {"last_seen_at"},  # written at most once a minute as a session is used
    "leases": {"*"},  # requests in flight: come and go with every ensure
    "usage_daily": {"*"},  # counted by the gateway after an answer's last byte, whenever it lands
}
"""Columns that change without any request changing state (activity, heartbeats, leases)."""


def snapshot(database: Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, less the volatile columns. Full-text indexes (FTS5 virtual tables
    and their shadow tables) are left out: they only restate the messages, as opaque blobs."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN"
                " (SELECT name FROM pragma_table_list WHERE type IN ('virtual', 'shadow'))"
            )
        ]
        result = {}
        for table in tables:
            skip = VOLATILE.get(table, set())
            if "*" in skip:
                continue
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            keep = [i for i, d in enumerate(cursor.description) if d[0] not in skip]
            result[table] = sorted((tuple(row[i] for i in keep) for row in cursor), key=repr)
        return result


def changes(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> dict[str, Any]:
    """Rows added and removed per table, for an assertion message; empty when nothing changed."""
    diff = {}
    for table in sorted(set(before) | set(after)):
        old, new = set(before.get(table, [])), set(after.get(table, []))
        if old != new:
            diff[table] = {"added": sorted(new - old, key=repr), "removed": sorted(old - new, key=repr)}
    return diff


# The Docker engine, relayed.


class EngineRelay:
    """docker_proxy.py's process: killed, the engine is away; started again, it is back. It
    records what its clients asked the engine (`requests`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path.with_suffix(".requests")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            relay = [sys.executable, str(HERE / "docker_proxy.py"), str(self.path)]
            self.proc = subprocess.Popen(relay, stdout=log)
        wait_for(self.path.exists, 10, "the engine relay")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.path.unlink(missing_ok=True)

    def requests(self) -> list[str]:
        """The request lines its clients sent, in order (`POST /v1.43/containers/create?...`)."""
        return self.log.read_text().splitlines() if self.log.exists() else []
