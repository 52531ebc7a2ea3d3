"""Nightly encrypted backups: their layout, their encryption, their retention and their status.

`sudoctl backup --all` (sudo-backup.timer) writes each family's archive (`family_archive`)
encrypted with age to `backup.recipients`, as `<backup.dir>/<YYYY-MM-DD>/<family id>.tar.age`,
beside the night's `manifest.json`. Only public keys are on the host: a restore or a verify is
handed the private key (an identity file) by the operator. The run's outcome goes to
`<core.state_dir>/backup-status.json`, which sudo-api reads for /admin and its metrics.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyrage

NIGHT = re.compile(r"\d{4}-\d{2}-\d{2}")
SUFFIX = ".tar.age"
MANIFEST = "manifest.json"
STATUS = "backup-status.json"
STALE_SEC = 36 * 3600
"""A last successful night older than this is a missed night (a nightly timer, plus its delay)."""


class BackupError(RuntimeError):
    """A backup that cannot be written, read or decrypted; the message says why."""


# retention


def retained(nights: Iterable[datetime.date], keep_daily: int, keep_weekly: int) -> set[datetime.date]:
    """The nights to keep: the newest `keep_daily`, and the newest night of each of the newest
    `keep_weekly` ISO weeks that have one (weeks without a backup do not use up the count, so
    a host that stopped backing up keeps its last weeks)."""
    newest_first = sorted(set(nights), reverse=True)
    keep = set(newest_first[:keep_daily])
    weeks: set[tuple[int, int]] = set()
    for night in newest_first:
        week = night.isocalendar()[:2]
        if week not in weeks and len(weeks) < keep_weekly:
            weeks.add(week)
            keep.add(night)
    return keep


def nights(backup_dir: Path) -> dict[datetime.date, Path]:
    """The nights in the backup directory, by date (other entries are left alone)."""
    found = {}
    for entry in backup_dir.iterdir():
        if entry.is_dir() and NIGHT.fullmatch(entry.name):
            try:
                found[datetime.date.fromisoformat(entry.name)] = entry
            except ValueError:  # 2026-13-45
                continue
    return found


# encryption


def recipients(keys: Iterable[str]) -> list[pyrage.x25519.Recipient]:
    keys = list(keys)
    if not keys:
        raise BackupError(
            "backup.recipients is empty: add an age public key (age1...) to [backup] in sudo.toml; "
            "its private key stays off this host"
        )
    try:
        return [pyrage.x25519.Recipient.from_str(k) for k in keys]
    except pyrage.RecipientError as exc:
        raise BackupError(f"backup.recipients: {exc}") from exc


def identities(path: Path) -> list[pyrage.x25519.Identity]:
    """The age identities (AGE-SECRET-KEY-1...) in a key file, as age-keygen writes it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read the identity file {path}: {exc}") from exc
    keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise BackupError(f"{path} holds no age identity (a line AGE-SECRET-KEY-1...)")
    try:
        return [pyrage.x25519.Identity.from_str(k) for k in keys]
    except pyrage.IdentityError as exc:
        raise BackupError(f"{path}: {exc}") from exc


def encrypt_into(out: Path, plain: IO[bytes], to: list[pyrage.x25519.Recipient]) -> None:
    """Encrypt `plain` to the recipients into `out` (mode 0600), written beside it and renamed
    into place whole, so a file of that name is never half-written."""
    plain.seek(0)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as partial:
        try:
            pyrage.encrypt_io(plain, partial, to)
            partial.flush()
            os.fsync(partial.fileno())
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, out)


def decrypt_into(path: Path, plain: IO[bytes], keys: list[pyrage.x25519.Identity]) -> None:
    """Decrypt the age file `path` into `plain`; BackupError for a wrong key or a damaged file."""
    try:
        with path.open("rb") as encrypted:
            pyrage.decrypt_io(encrypted, plain, keys)
    except pyrage.DecryptError as exc:  # the header: no identity matches, or it is not age's
        raise BackupError(f"{path} cannot be decrypted with this identity: {exc}") from exc
    except OSError as exc:  # the payload: a chunk fails its authentication (damaged, or cut)
        raise BackupError(f"{path} is damaged, or cannot be read: {exc}") from exc
    plain.seek(0)


# the night's manifest and the host's status


def write_json(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Write JSON beside `path`, then rename it into place whole."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as partial:
        try:
            json.dump(data, partial, indent=1)
            os.fchmod(partial.fileno(), mode)
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, path)


@dataclass(frozen=True)
class Status:
    """The last nightly run, as sudo-api shows it."""

    last_run_at: float | None = None
    last_success_at: float | None = None
    ok: bool = False
    families: int = 0
    failed: int = 0
    error: str | None = None

    def missed(self, now: float | None = None) -> bool:
        """No successful night within STALE_SEC (a failed, a missing or a never-run backup)."""
        now = time.time() if now is None else now
        return self.last_success_at is None or now - self.last_success_at > STALE_SEC


def read_status(state_dir: Path) -> Status | None:
    """The last run's status, or None if no nightly backup ever ran on this host."""
    try:
        data = json.loads((state_dir / STATUS).read_text())
        return Status(**{k: data.get(k) for k in Status.__dataclass_fields__ if k in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return Status(error=f"{STATUS} is unreadable: {exc}")


def summary(status: Status | None, now: float | None = None) -> dict[str, Any]:
    """The status as /admin and /v1/admin/fleet show it: `state` is "ok", "failed" (the last run
    failed, or no night succeeded within STALE_SEC) or "none" (no nightly backup ran yet)."""
    if status is None:
        return {"state": "none", "last_run_at": None, "last_success_at": None, "families": 0, "error": None}
    failed = not status.ok or status.missed(now)
    error = status.error
    if failed and error is None:
        error = "no backup succeeded in the last night: is sudo-backup.timer running?"
    return {
        "state": "failed" if failed else "ok",
        "last_run_at": status.last_run_at,
        "last_success_at": status.last_success_at,
        "families": status.families,
        "error": error,
    }


def write_status(state_dir: Path, status: Status) -> None:
    """Readable by the sudo-data group (sudo-api), whatever the writer's umask."""
    write_json(state_dir / STATUS, status.__dict__, mode=0o640)
