"""`sudoctl backup` and `sudoctl restore`: one family's archive (`sudo_core.family_archive`), and
the nightly encrypted backups of every family (`sudo_core.backups`): run, listed, verified.

A restore checks the whole file before anything changes, inserts the rows in one transaction,
then gives the provisioner the volume; a new family whose volume could not be restored leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from sudo_core import backups
from sudo_core.config import Settings
from sudo_core.db import Database
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.family_archive import FORMAT, TABLES, VERSION, ArchiveError, make_archive
from sudo_core.provisioner_client import Pause, ProvisionerClient, ProvisionerError, volume_tar_problem

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
    print(f"copying the data volume of {family} (its runtime is paused meanwhile)", flush=True)
    progress = Progress()
    pause = Pause()

    async def run() -> dict[str, Any]:
        async with ProvisionerClient(socket) as provisioner:
            return await make_archive(db, provisioner, family, out, progress, pause=pause)

    rows = asyncio.run(run())
    progress.done()
    print(
        f"backed up family {family} ({rows['family']['name']}) to {out} ({out.stat().st_size:,} bytes): "
        f"{len(rows['accounts'])} account(s), {len(rows['messages'])} message(s); "
        f"its runtime was paused {pause.seconds:.1f} s"
    )


# restore


def read_backup(path: Path, family: uuid.UUID | None, plain: IO[bytes] | None = None) -> dict[str, Any]:
    """family.json of a backup of this family (None: of the family it names), after reading the
    whole file through; `plain` is the archive decrypted from `path`, if it was encrypted."""
    try:
        with _open(path, plain) as archive:
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


def _open(path: Path, plain: IO[bytes] | None) -> tarfile.TarFile:
    if plain is None:
        return tarfile.open(path, "r:gz")
    plain.seek(0)
    return tarfile.open(fileobj=plain, mode="r:gz")


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    file = archive.extractfile(name)  # KeyError if missing
    if file is None:
        raise tarfile.TarError(f"{name} is not a file")
    return file


def check_rows(rows: Any, family: uuid.UUID | None) -> dict[str, Any]:
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
    family = family or found
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


async def push_volume(socket: Path, family: uuid.UUID, path: Path, plain: IO[bytes] | None) -> None:
    progress = Progress()

    async def chunks() -> AsyncIterator[bytes]:
        with _open(path, plain) as archive:
            volume = _member(archive, "volume.tar")
            while chunk := volume.read(CHUNK):
                progress("volume sent", len(chunk))
                yield chunk

    async with ProvisionerClient(socket) as provisioner:
        await provisioner.put_volume(family, chunks())
    progress.done()


def restore(
    db: Database, socket: Path, family: uuid.UUID | None, path: Path, replace: bool, identity: Path | None
) -> None:
    """Check the whole file (decrypted first, with the identity, if it is encrypted), insert the
    rows, then give the provisioner the volume. Without `family`, the one the file holds."""
    with decrypted(path, identity) as plain:
        rows = read_backup(path, family, plain)
        family = uuid.UUID(rows["family"]["id"])
        replaced = write_rows(db, rows, replace)
        try:
            asyncio.run(push_volume(socket, family, path, plain))
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


AGE_HEADER = b"age-encryption.org/v1\n"


@contextlib.contextmanager
def decrypted(path: Path, identity: Path | None) -> Iterator[IO[bytes] | None]:
    """An encrypted backup decrypted into an unnamed temporary file; None for a plain one."""
    try:
        with path.open("rb") as file:
            encrypted = file.read(len(AGE_HEADER)) == AGE_HEADER
    except OSError:  # read_backup says what is wrong with it
        encrypted = False
    if not encrypted:
        yield None
        return
    if identity is None:
        raise backups.BackupError(f"{path} is encrypted: give its private key with --identity KEYFILE")
    keys = backups.identities(identity)
    with tempfile.TemporaryFile() as plain:
        backups.decrypt_into(path, plain, keys)
        yield plain


# the nightly backups (sudo-backup.timer)


def backup_all(settings: Settings) -> int:
    """Every family's archive, encrypted, into tonight's directory; the manifest, the status
    sudo-api shows, and (if every family was backed up) the retention. 1 if anything failed."""
    started = time.time()
    state_dir = settings.core.state_dir
    previous = backups.read_status(state_dir) or backups.Status()
    night = datetime.date.today().isoformat()  # the host's local date, as the timer's 03:00
    try:
        to = backups.recipients(settings.backup.recipients)
        night_dir = settings.backup.dir / night
        try:
            night_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise backups.BackupError(f"cannot write to backup.dir {settings.backup.dir}: {exc}") from exc
        db = Database(settings.core.database_path)
        try:
            done, errors = asyncio.run(_back_up_families(db, settings.provisioner.socket, night_dir, to))
        finally:
            db.close()
    except (backups.BackupError, OSError) as exc:
        backups.write_status(state_dir, _status(previous, started, 0, 0, str(exc)))
        raise
    backups.write_json(
        night_dir / backups.MANIFEST,
        {
            "format": "sudo-backup-night",
            "version": 1,
            "night": night,
            "started_at": started,
            "finished_at": time.time(),
            "recipients": list(settings.backup.recipients),
            "families": done,
            "errors": errors,
        },
    )
    if errors:
        error = f"{len(errors)} of {len(done) + len(errors)} families failed: " + "; ".join(
            f"{e['family']}: {e['error']}" for e in errors
        )
    else:
        error = None
        prune(settings.backup.dir, settings.backup.keep_daily, settings.backup.keep_weekly)
    backups.write_status(state_dir, _status(previous, started, len(done), len(errors), error))
    print(f"night {night}: {len(done)} family(ies) backed up into {night_dir}, {len(errors)} failed")
    return 1 if errors else 0


def _status(
    previous: backups.Status, started: float, families: int, failed: int, error: str | None
) -> backups.Status:
    return backups.Status(
        last_run_at=started,
        last_success_at=started if error is None else previous.last_success_at,
        ok=error is None,
        families=families,
        failed=failed,
        error=error,
    )


async def _back_up_families(
    db: Database, socket: Path, night_dir: Path, to: list[Any]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each family in turn; one busy with a request past the provisioner's grace is tried again
    once after the others."""
    done: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    families = [f.id for f in await db.aio(db.list_families)]
    async with ProvisionerClient(socket) as provisioner:
        for attempt in range(2):
            busy = []
            for family in families:
                began, pause = time.monotonic(), Pause()
                out = night_dir / f"{family}{backups.SUFFIX}"
                try:
                    await make_archive(db, provisioner, family, out, None, to, pause)
                except (ArchiveError, ProvisionerError, aiohttp.ClientError, OSError) as exc:
                    errors[str(family)] = str(exc)
                    print(f"{family}: FAILED: {exc}", file=sys.stderr, flush=True)
                    if attempt == 0 and isinstance(exc, ProvisionerError) and exc.status == 409:
                        busy.append(family)
                    continue
                errors.pop(str(family), None)
                entry = {
                    "family": str(family),
                    "file": out.name,
                    "bytes": out.stat().st_size,
                    "sha256": await asyncio.to_thread(sha256, out),
                    "seconds": round(time.monotonic() - began, 3),
                    "paused_sec": round(pause.seconds, 3),
                }
                done.append(entry)
                print(
                    f"{family}: {entry['bytes']:,} bytes in {entry['seconds']:.1f} s, "
                    f"its runtime paused {entry['paused_sec']:.1f} s",
                    flush=True,
                )
            families = busy
    return done, [{"family": f, "error": e} for f, e in errors.items()]


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def prune(backup_dir: Path, keep_daily: int, keep_weekly: int) -> None:
    found = backups.nights(backup_dir)
    for night in sorted(set(found) - backups.retained(found, keep_daily, keep_weekly)):
        shutil.rmtree(found[night])
        print(f"removed the night of {night} (backup.keep_daily {keep_daily}, keep_weekly {keep_weekly})")


def list_nights(settings: Settings) -> int:
    """Each night, newest first: its families, sizes, age and failures."""
    try:
        found = backups.nights(settings.backup.dir)
    except OSError as exc:
        raise backups.BackupError(f"cannot read backup.dir {settings.backup.dir}: {exc}") from exc
    if not found:
        print(f"no backups in {settings.backup.dir}")
    for night, path in sorted(found.items(), reverse=True):
        try:
            manifest = json.loads((path / backups.MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {"families": [], "errors": [{"family": "?", "error": "no readable manifest.json"}]}
        families, errors = manifest.get("families", []), manifest.get("errors", [])
        size = sum(f.get("bytes", 0) for f in families)
        age = (time.time() - manifest["finished_at"]) / 3600 if "finished_at" in manifest else None
        state = f"{len(errors)} FAILED" if errors else "OK"
        print(
            f"{night}  {len(families)} family(ies)  {size:,} bytes  "
            f"{'age ?' if age is None else f'{age:.0f} h old'}  {state}"
        )
        for f in families:
            print(f"  {f.get('family')}  {f.get('bytes', 0):,} bytes  paused {f.get('paused_sec', 0):.1f} s")
        for e in errors:
            print(f"  {e.get('family')}  FAILED: {e.get('error')}")
    return 0


def verify(settings: Settings, target: str, identity: Path) -> int:
    """Decrypt and check each archive (a file, or every one of a night) without restoring it."""
    path = Path(target)
    if not path.exists() and backups.NIGHT.fullmatch(target):
        path = settings.backup.dir / target
    if path.is_dir():
        files = sorted(path.glob(f"*{backups.SUFFIX}"))
        if not files:
            raise backups.BackupError(f"{path} holds no {backups.SUFFIX} archive")
    else:
        files = [path]
    keys = backups.identities(identity)
    failed = 0
    for file in files:
        try:
            family = parse_family_id(file.name.removesuffix(backups.SUFFIX))
        except BadFamilyId:
            family = None  # renamed: the archive says whose it is
        try:
            with tempfile.TemporaryFile() as plain:
                backups.decrypt_into(file, plain, keys)
                rows = read_backup(file, family, plain)
        except (backups.BackupError, ArchiveError, OSError) as exc:
            failed += 1
            print(f"FAILED {file}: {exc}")
            continue
        print(
            f"ok {file}: family {rows['family']['id']} ({rows['family']['name']}), "
            f"{len(rows['accounts'])} account(s), {len(rows['messages'])} message(s), and its volume"
        )
    return 1 if failed else 0
