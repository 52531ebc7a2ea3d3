"""`sudoctl backup` and `sudoctl restore`: one family's archive (`sudo_core.family_archive`).

A restore checks the whole file before anything changes, inserts the rows in one transaction,
then gives the provisioner the volume; a new family whose volume could not be restored leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tarfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from sudo_core.db import Database
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.family_archive import FORMAT, TABLES, VERSION, ArchiveError, make_archive
from sudo_core.provisioner_client import ProvisionerClient, volume_tar_problem

CHUNK = 1 << 20


class Progress:
    """Prints how many bytes went by, per step (volume copied, packed, sent), at most once a
    second, then the totals."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self._shown = time.monotonic()

    def __call__(self, what: str, count: int) -> None:
        self.bytes[what] = self.bytes.get(what, 0) + count
        if time.monotonic() - self._shown >= 1:
            self._shown = time.monotonic()
            print(f"{what}: {self.bytes[what]:,} bytes so far", flush=True)

    def done(self) -> None:
        for what, count in self.bytes.items():
            print(f"{what}: {count:,} bytes", flush=True)


# backup


def backup(db: Database, socket: Path, family: uuid.UUID, out: Path) -> None:
    print(f"copying the data volume of {family} (its runtime is stopped first)", flush=True)
    progress = Progress()

    async def run() -> dict[str, Any]:
        async with ProvisionerClient(socket) as provisioner:
            return await make_archive(db, provisioner, family, out, progress)

    rows = asyncio.run(run())
    progress.done()
    print(
        f"backed up family {family} ({rows['family']['name']}) to {out} ({out.stat().st_size:,} bytes): "
        f"{len(rows['accounts'])} account(s), {len(rows['messages'])} message(s)"
    )


# restore


def read_backup(path: Path, family: uuid.UUID) -> dict[str, Any]:
    """family.json of a backup of this family, after reading the whole file through."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            rows = check_rows(json.loads(_member(archive, "family.json").read()), family)
            problem = volume_tar_problem(_member(archive, "volume.tar"))
            # To the end of the gzip stream, whose CRC is the only check on the files' contents.
            while archive.fileobj.read(CHUNK):
                pass
    except (tarfile.TarError, KeyError, EOFError, OSError, zlib.error, ValueError) as exc:
        # KeyError: a member missing; OSError: no such file, or bad gzip; ValueError: bad JSON
        raise ArchiveError(f"{path} is not a readable Sudo backup: {exc}") from exc
    if problem:
        raise ArchiveError(f"{path} is not a readable Sudo backup: volume.tar: {problem}")
    return rows


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    file = archive.extractfile(name)  # KeyError if missing
    if file is None:
        raise tarfile.TarError(f"{name} is not a file")
    return file


def check_rows(rows: Any, family: uuid.UUID) -> dict[str, Any]:
    """The rows of family.json, checked as the hostile file it may be: every row the family's,
    every member reference one of its own accounts, no admin, and every id in its canonical
    form (an id spelt in capitals would be a second family, or another family's row)."""
    if not isinstance(rows, dict) or rows.get("format") != FORMAT:
        raise ValueError("family.json is not a Sudo family backup")
    if rows.get("version") != VERSION:
        raise ValueError(f"backup format version {rows.get('version')!r} is not {VERSION}, which this reads")
    try:
        found = parse_family_id(rows["family"]["id"])
    except (BadFamilyId, KeyError, TypeError):
        raise ValueError("family.json names no family id") from None
    if found != family:
        raise ArchiveError(f"this backup holds family {found}, not {family}")
    rows["family"]["id"] = str(family)
    for table in TABLES:
        table_rows = rows.setdefault(table, [])  # a backup made before the table existed has none
        if not isinstance(table_rows, list) or not all(
            isinstance(r, dict) and canonical_id(r.get("family_id")) == str(family) for r in table_rows
        ):
            raise ValueError(f"family.json: {table} are not all rows of family {family}")
        for row in table_rows:
            row["family_id"] = str(family)
    rows = with_members(rows)
    for account in rows["accounts"]:
        account["id"] = canonical_id(account.get("id"))
        if account.get("is_admin"):
            raise ValueError("family.json: an account is the host's admin, which no family's backup holds")
    members = {a["id"] for a in rows["accounts"]}
    for table in ("messages", "whatsapp_numbers"):
        for row in rows[table]:
            if row.get("account_id") is not None:
                row["account_id"] = canonical_id(row["account_id"])
                if row["account_id"] not in members:
                    raise ValueError(f"family.json: {table} name an account that is not the family's")
    return rows


def canonical_id(value: Any) -> str | None:
    """A UUID as the database writes it (lower case, dashed); None for what is no UUID."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


def with_members(rows: dict[str, Any]) -> dict[str, Any]:
    """A backup from before families had members (accounts without a role) read as the database
    migration reads such a database: the oldest account owns the family, the others are adults,
    and the history and numbers are the owner's."""
    accounts = sorted(rows["accounts"], key=lambda a: (a.get("created_at") or 0, a.get("id")))
    if not accounts or all("role" in a for a in accounts):
        return rows
    for n, account in enumerate(accounts):
        account.setdefault("role", "owner" if n == 0 else "adult")
    owner = next(a["id"] for a in accounts if a["role"] == "owner")
    for table in ("messages", "whatsapp_numbers"):
        for row in rows[table]:
            row.setdefault("account_id", owner)
    return rows


def write_rows(db: Database, rows: dict[str, Any], replace: bool) -> bool:
    """Insert the family's rows in one transaction; True if a family of that id was replaced."""
    family = rows["family"]["id"]
    try:
        with db.transaction():
            existed = db.query_one("SELECT 1 FROM families WHERE id = ?", (family,)) is not None
            if existed and not replace:
                raise ArchiveError(f"family {family} already exists here: --replace overwrites it")
            # Its accounts, history, devices... go with it (ON DELETE CASCADE).
            db.execute("DELETE FROM families WHERE id = ?", (family,))
            _insert(db, "families", [rows["family"]])
            for table in TABLES:
                _insert(db, table, rows[table])
    except sqlite3.IntegrityError as exc:  # e.g. an account's email taken by another family here
        raise ArchiveError(f"the database refused the family's rows ({exc}); nothing was changed") from exc
    return existed


def _insert(db: Database, table: str, rows: list[dict[str, Any]]) -> None:
    columns = {c["name"] for c in db.query(f"PRAGMA table_info({table})")}
    for row in rows:
        unknown = set(row) - columns
        if unknown:
            raise ArchiveError(
                f"{table} has no column {', '.join(sorted(unknown))} here: the backup is from a newer sudo"
            )
        db.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


async def push_volume(socket: Path, family: uuid.UUID, path: Path) -> None:
    progress = Progress()

    async def chunks() -> AsyncIterator[bytes]:
        with tarfile.open(path, "r:gz") as archive:
            volume = _member(archive, "volume.tar")
            while chunk := volume.read(CHUNK):
                progress("volume sent", len(chunk))
                yield chunk

    async with ProvisionerClient(socket) as provisioner:
        await provisioner.put_volume(family, chunks())
    progress.done()


def restore(db: Database, socket: Path, family: uuid.UUID, path: Path, replace: bool) -> None:
    """Check the whole file, insert the rows, then give the provisioner the volume."""
    rows = read_backup(path, family)
    replaced = write_rows(db, rows, replace)
    try:
        asyncio.run(push_volume(socket, family, path))
    except BaseException:
        if replaced:
            print(
                "sudoctl: the family's rows were replaced but its volume was not: run the restore again",
                file=sys.stderr,
            )
        else:  # a new family that failed to restore leaves nothing behind
            db.delete_family(family)
        raise
    print(
        f"restored family {family} ({rows['family']['name']}): "
        f"{len(rows['accounts'])} account(s), {len(rows['messages'])} message(s), and its volume"
    )
