"""`sudoctl backup` and `sudoctl restore`: one family's database rows and data volume in one file.

The file is a gzipped tar of two members:
- `family.json`: the format and its version, the family's row, and its rows of `TABLES`.
  Sessions, pairings and leases stay out: they are short-lived and bound to the host.
- `volume.tar`: the family's data volume as the provisioner gives it (with the runtime stopped,
  so Hermes's files are copied consistent).

Account rows hold password hashes and device rows token hashes: the file is a secret, written
mode 0600. The volume is copied before the rows are read, so every message the volume's agent
knows of is in the rows; what the agent never saw is delivered again after a restore.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from sudo_core.db import Database
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.provisioner_client import ProvisionerClient, volume_tar_problem

FORMAT = "sudo-family-backup"
VERSION = 1
TABLES = (
    "accounts",
    "messages",
    "agent_cursors",
    "devices",
    "whatsapp_numbers",
    "whatsapp_inbox",
    "whatsapp_outbound",
)
"""The family's tables besides `families`, each with a family_id column."""
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup that cannot be made or restored; the message says why, and nothing was changed."""


class Progress:
    """Prints how many bytes went by, at most once a second, then the total."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bytes = 0
        self._shown = time.monotonic()

    def add(self, count: int) -> None:
        self.bytes += count
        if time.monotonic() - self._shown >= 1:
            self._shown = time.monotonic()
            print(f"{self.what}: {self.bytes:,} bytes so far", flush=True)

    def done(self) -> None:
        print(f"{self.what}: {self.bytes:,} bytes", flush=True)


# backup


def backup(db: Database, socket: Path, family: uuid.UUID, out: Path) -> None:
    if db.get_family(family) is None:
        raise BackupError(f"no family {family}")
    with tempfile.TemporaryFile(dir=out.parent) as volume:
        asyncio.run(pull_volume(socket, family, volume))
        problem = volume_tar_problem(volume)
        if problem:
            raise BackupError(f"the provisioner's copy of the volume is not a whole tar: {problem}")
        rows = read_rows(db, family)
        write_file(out, rows, volume)
    print(
        f"backed up family {family} ({rows['family']['name']}) to {out} ({out.stat().st_size:,} bytes): "
        f"{len(rows['accounts'])} account(s), {len(rows['messages'])} message(s)"
    )


async def pull_volume(socket: Path, family: uuid.UUID, volume: IO[bytes]) -> None:
    print(f"copying the data volume of {family} (its runtime is stopped first)", flush=True)
    progress = Progress("volume copied")
    try:
        async with ProvisionerClient(socket) as provisioner:
            async for chunk in provisioner.get_volume(family):
                volume.write(chunk)
                progress.add(len(chunk))
    except aiohttp.ClientPayloadError as exc:
        raise BackupError(f"the provisioner broke off the copy of the volume: {exc}") from exc
    progress.done()


def read_rows(db: Database, family: uuid.UUID) -> dict[str, Any]:
    """The family's rows, read in one transaction so the history and its cursor agree."""
    with db.transaction():
        row = db.query_one("SELECT * FROM families WHERE id = ?", (str(family),))
        if row is None:
            raise BackupError(f"no family {family}")
        rows: dict[str, Any] = {"format": FORMAT, "version": VERSION, "family": dict(row)}
        for table in TABLES:
            # messages.n orders the whole host's history: restored rows get new numbers, in order.
            order = " ORDER BY n" if table == "messages" else ""
            found = db.query(f"SELECT * FROM {table} WHERE family_id = ?{order}", (str(family),))
            rows[table] = [{k: v for k, v in dict(r).items() if k != "n"} for r in found]
    return rows


def write_file(out: Path, rows: dict[str, Any], volume: IO[bytes]) -> None:
    """Write the backup beside `out` (mode 0600), then rename it into place whole."""
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as partial:
        try:
            with tarfile.open(fileobj=partial, mode="w:gz", compresslevel=6) as archive:
                data = json.dumps(rows, indent=1).encode()
                info = tarfile.TarInfo("family.json")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                archive.addfile(info, io.BytesIO(data))
                info = tarfile.TarInfo("volume.tar")
                info.size, info.mtime, info.mode = volume.seek(0, os.SEEK_END), int(time.time()), 0o600
                volume.seek(0)
                progress = Progress("volume packed")
                archive.addfile(info, _Counted(volume, progress))
                progress.done()
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, out)


class _Counted:
    """A file whose reads are counted as progress."""

    def __init__(self, file: IO[bytes], progress: Progress) -> None:
        self.file = file
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.progress.add(len(data))
        return data


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
        raise BackupError(f"{path} is not a readable Sudo backup: {exc}") from exc
    if problem:
        raise BackupError(f"{path} is not a readable Sudo backup: volume.tar: {problem}")
    return rows


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    file = archive.extractfile(name)  # KeyError if missing
    if file is None:
        raise tarfile.TarError(f"{name} is not a file")
    return file


def check_rows(rows: Any, family: uuid.UUID) -> dict[str, Any]:
    if not isinstance(rows, dict) or rows.get("format") != FORMAT:
        raise ValueError("family.json is not a Sudo family backup")
    if rows.get("version") != VERSION:
        raise ValueError(f"backup format version {rows.get('version')!r} is not {VERSION}, which this reads")
    try:
        found = parse_family_id(rows["family"]["id"])
    except (BadFamilyId, KeyError, TypeError):
        raise ValueError("family.json names no family id") from None
    if found != family:
        raise BackupError(f"this backup holds family {found}, not {family}")
    for table in TABLES:
        table_rows = rows.setdefault(table, [])  # a backup made before the table existed has none
        if not isinstance(table_rows, list) or not all(
            isinstance(r, dict) and r.get("family_id") == str(family) for r in table_rows
        ):
            raise ValueError(f"family.json: {table} are not all rows of family {family}")
    return with_members(rows)


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
                raise BackupError(f"family {family} already exists here: --replace overwrites it")
            # Its accounts, history, devices... go with it (ON DELETE CASCADE).
            db.execute("DELETE FROM families WHERE id = ?", (family,))
            _insert(db, "families", [rows["family"]])
            for table in TABLES:
                _insert(db, table, rows[table])
    except sqlite3.IntegrityError as exc:  # e.g. an account's email taken by another family here
        raise BackupError(f"the database refused the family's rows ({exc}); nothing was changed") from exc
    return existed


def _insert(db: Database, table: str, rows: list[dict[str, Any]]) -> None:
    columns = {c["name"] for c in db.query(f"PRAGMA table_info({table})")}
    for row in rows:
        unknown = set(row) - columns
        if unknown:
            raise BackupError(
                f"{table} has no column {', '.join(sorted(unknown))} here: the backup is from a newer sudo"
            )
        db.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


async def push_volume(socket: Path, family: uuid.UUID, path: Path) -> None:
    progress = Progress("volume sent")

    async def chunks() -> AsyncIterator[bytes]:
        with tarfile.open(path, "r:gz") as archive:
            volume = _member(archive, "volume.tar")
            while chunk := volume.read(CHUNK):
                progress.add(len(chunk))
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
