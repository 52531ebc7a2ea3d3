"""A family's archive: its database rows and its data volume in one file.

The file is a gzipped tar of two members:
- `family.json`: the format and its version, the family's row, and its rows of `TABLES`.
  Sessions, invitations, reset links, pairings, leases and announcements stay out: they are
  short-lived and bound to the host.
- `volume.tar`: the family's data volume as the provisioner gives it (with the runtime paused,
  after any request in flight, so Hermes's files are copied consistent).

`sudoctl backup` writes it and `sudoctl restore` reads it; a family's owner downloads the same
file from sudo-api. Account rows hold password hashes and device rows token hashes: the file is
a secret, written mode 0600. The volume is copied before the rows are read, so every message the
volume's agent knows of is in the rows; what the agent never saw is delivered again after a
restore.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import pyrage

from sudo_core import backups
from sudo_core.db import Database
from sudo_core.provisioner_client import Pause, ProvisionerClient, volume_tar_problem

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

Progress = Callable[[str, int], None]
"""Told (what, bytes) as the volume is copied and packed."""


class ArchiveError(RuntimeError):
    """An archive that cannot be made or restored; the message says why, and nothing was changed."""


async def make_archive(
    db: Database,
    provisioner: ProvisionerClient,
    family: uuid.UUID,
    out: Path,
    progress: Progress | None = None,
    recipients: list[pyrage.x25519.Recipient] | None = None,
    pause: Pause | None = None,
) -> dict[str, Any]:
    """Write the family's archive to `out` (mode 0600, renamed into place whole); its rows.

    With recipients, the file is the archive encrypted to them with age (`backups`); the plain
    archive is made in an unnamed temporary file first. `pause` is told how long the family's
    runtime was paused for the copy of its volume.
    """
    if await db.aio(db.get_family, family) is None:
        raise ArchiveError(f"no family {family}")
    with tempfile.TemporaryFile(dir=out.parent) as volume:
        try:
            async for chunk in provisioner.get_volume(family, pause):
                await asyncio.to_thread(volume.write, chunk)
                if progress:
                    progress("volume copied", len(chunk))
        except aiohttp.ClientPayloadError as exc:
            raise ArchiveError(f"the provisioner broke off the copy of the volume: {exc}") from exc
        problem = await asyncio.to_thread(volume_tar_problem, volume)
        if problem:
            raise ArchiveError(f"the provisioner's copy of the volume is not a whole tar: {problem}")
        rows = await db.aio(read_rows, db, family)
        if recipients is None:
            await asyncio.to_thread(write_archive, out, rows, volume, progress)
        else:
            await asyncio.to_thread(write_encrypted, out, rows, volume, recipients, progress)
    return rows


def read_rows(db: Database, family: uuid.UUID) -> dict[str, Any]:
    """The family's rows, read in one transaction so the history and its cursor agree."""
    with db.transaction():
        row = db.query_one("SELECT * FROM families WHERE id = ?", (str(family),))
        if row is None:
            raise ArchiveError(f"no family {family}")
        rows: dict[str, Any] = {"format": FORMAT, "version": VERSION, "family": dict(row)}
        for table in TABLES:
            # messages.n orders the whole host's history: restored rows get new numbers, in order.
            order = " ORDER BY n" if table == "messages" else ""
            found = db.query(f"SELECT * FROM {table} WHERE family_id = ?{order}", (str(family),))
            rows[table] = [{k: v for k, v in dict(r).items() if k != "n"} for r in found]
    return rows


def write_archive(
    out: Path, rows: dict[str, Any], volume: IO[bytes], progress: Progress | None = None
) -> None:
    """Write the archive beside `out` (mode 0600), then rename it into place whole."""
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as partial:
        try:
            pack(partial, rows, volume, progress)
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, out)


def write_encrypted(
    out: Path,
    rows: dict[str, Any],
    volume: IO[bytes],
    recipients: list[pyrage.x25519.Recipient],
    progress: Progress | None = None,
) -> None:
    """The archive encrypted to the recipients at `out`, renamed into place whole."""
    with tempfile.TemporaryFile(dir=out.parent) as plain:
        pack(plain, rows, volume, progress)
        backups.encrypt_into(out, plain, recipients)


def pack(file: IO[bytes], rows: dict[str, Any], volume: IO[bytes], progress: Progress | None = None) -> None:
    """The gzipped tar of family.json and volume.tar, written to `file`."""
    with tarfile.open(fileobj=file, mode="w:gz", compresslevel=6) as archive:
        data = json.dumps(rows, indent=1).encode()
        info = tarfile.TarInfo("family.json")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
        archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("volume.tar")
        info.size, info.mtime, info.mode = volume.seek(0, os.SEEK_END), int(time.time()), 0o600
        volume.seek(0)
        archive.addfile(info, _Counted(volume, progress))


class _Counted:
    """A file whose reads are counted as progress."""

    def __init__(self, file: IO[bytes], progress: Progress | None) -> None:
        self.file = file
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        if self.progress:
            self.progress("volume packed", len(data))
        return data
