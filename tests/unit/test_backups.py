"""The nightly backups without Docker: retention, settings, age encryption (a round trip, a wrong
key, a damaged file), `sudoctl backup --all|list|verify` and `restore --identity` failing
clearly, and the status /admin and the metrics read."""

from __future__ import annotations

import datetime
import io
import json
import tarfile
import uuid
from pathlib import Path

import pyrage
import pytest
from test_cli import backup_file, run

from sudo_core import backups, config
from sudo_core.family_archive import write_encrypted

D = datetime.date


def test_retention_keeps_the_newest_nights_and_each_recent_weeks_newest():
    nights = [D(2026, 12, 6) - datetime.timedelta(days=n) for n in range(60)]  # 2026-12-06 is a Sunday
    kept = backups.retained(nights, keep_daily=7, keep_weekly=4)
    daily = {D(2026, 12, d) for d in range(0 + 1, 7)} | {D(2026, 11, 30)}
    weekly = {D(2026, 12, 6), D(2026, 11, 29), D(2026, 11, 22), D(2026, 11, 15)}  # each week's Sunday
    assert kept == daily | weekly
    assert backups.retained([], 7, 4) == set()
    assert backups.retained(nights, 1, 0) == {D(2026, 12, 6)}


def test_retention_counts_only_weeks_that_have_a_backup():
    """A host that stopped backing up keeps its last weeks, however long ago."""
    nights = [D(2026, 1, 5), D(2026, 1, 6), D(2026, 1, 14), D(2026, 2, 20), D(2026, 6, 1)]
    assert backups.retained(nights, keep_daily=1, keep_weekly=3) == {
        D(2026, 6, 1),
        D(2026, 2, 20),
        D(2026, 1, 14),
    }
    assert backups.retained(nights, keep_daily=2, keep_weekly=10) == set(nights) - {D(2026, 1, 5)}


def test_backup_settings_are_checked(tmp_path: Path):
    key = str(pyrage.x25519.Identity.generate().to_public())
    path = tmp_path / "sudo.toml"
    path.write_text(f'[backup]\ndir = "{tmp_path}"\nrecipients = ["{key}"]\nkeep_daily = 3\n')
    settings = config.load({"SUDO_CONFIG": str(path)})
    assert settings.backup.recipients == (key,) and settings.backup.keep_daily == 3
    assert settings.backup.keep_weekly == 4 and settings.backup.dir == tmp_path
    env = {"SUDO_CONFIG": "", "SUDO_BACKUP_RECIPIENTS": f"{key}, {key[:-1]}x"}
    with pytest.raises(config.ConfigError, match=r"backup\.recipients: .* is not an age public key"):
        config.load(env)
    with pytest.raises(config.ConfigError, match=r"backup\.keep_daily: 0 keeps no night"):
        config.load({"SUDO_CONFIG": "", "SUDO_BACKUP_KEEP_DAILY": "0"})
    assert config.load({"SUDO_CONFIG": ""}).backup.recipients == ()


def encrypted_backup(tmp_path: Path, family: str, to: list) -> Path:
    """A nightly archive as `sudoctl backup --all` writes it (family_archive.write_encrypted)."""
    with tarfile.open(backup_file(tmp_path / "plain.tar.gz", family)) as plain:
        rows = json.load(plain.extractfile("family.json"))
        volume = io.BytesIO(plain.extractfile("volume.tar").read())
    out = tmp_path / f"{family}.tar.age"
    write_encrypted(out, rows, volume, to)
    return out


def key_file(path: Path, identity: pyrage.x25519.Identity) -> Path:
    path.write_text(f"# created: as age-keygen writes it\n# public key: {identity.to_public()}\n{identity}\n")
    return path


def test_an_archive_is_readable_with_its_key_only_and_verify_says_so(tmp_path: Path):
    family = str(uuid.uuid4())
    key, stranger = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    out = encrypted_backup(tmp_path, family, [key.to_public()])
    data = out.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n") and out.stat().st_mode & 0o777 == 0o600
    assert b"grace@example.org" not in data and b"Hopper" not in data
    assert not tarfile.is_tarfile(out)
    assert list(tmp_path.glob(".*")) == []  # nothing half-written left beside it

    ok = run(
        "sudoctl",
        "backup",
        "verify",
        str(out),
        "--identity",
        str(key_file(tmp_path / "k", key)),
        state=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"ok {out}: family {family} (Hopper), 1 account(s), 0 message(s)" in ok.stdout

    wrong = run(
        "sudoctl",
        "backup",
        "verify",
        str(out),
        "--identity",
        str(key_file(tmp_path / "s", stranger)),
        state=tmp_path,
    )
    assert wrong.returncode == 1 and "cannot be decrypted with this identity" in wrong.stdout, wrong.stdout

    damaged = tmp_path / "damaged" / out.name
    damaged.parent.mkdir()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(flipped))
    result = run(
        "sudoctl", "backup", "verify", str(damaged.parent), "--identity", str(tmp_path / "k"), state=tmp_path
    )
    assert result.returncode == 1 and f"FAILED {damaged}" in result.stdout, result.stdout

    # Renamed to another family's name: the file says whose it is.
    swapped = tmp_path / f"{uuid.uuid4()}.tar.age"
    swapped.write_bytes(data)
    result = run(
        "sudoctl", "backup", "verify", str(swapped), "--identity", str(tmp_path / "k"), state=tmp_path
    )
    assert result.returncode == 1 and f"this backup holds family {family}" in result.stdout


def test_restore_decrypts_with_the_identity_and_refuses_without_one(tmp_path: Path):
    family = str(uuid.uuid4())
    key = pyrage.x25519.Identity.generate()
    out = encrypted_backup(tmp_path, family, [key.to_public()])
    bare = run("sudoctl", "restore", str(out), state=tmp_path)
    assert bare.returncode == 1 and "is encrypted: give its private key with --identity" in bare.stderr
    not_a_key = tmp_path / "not-a-key"
    not_a_key.write_text("hello\n")
    result = run("sudoctl", "restore", "--identity", str(not_a_key), str(out), state=tmp_path)
    assert result.returncode == 1 and "holds no age identity" in result.stderr
    # Decrypted and checked whole: the rows go in, then the volume cannot (no provisioner here),
    # so the new family is taken out again.
    result = run(
        "sudoctl", "restore", "--identity", str(key_file(tmp_path / "k", key)), str(out), state=tmp_path
    )
    assert result.returncode == 1 and "cannot reach the provisioner" in result.stderr, result.stderr
    assert run("sudoctl", "families", "list", state=tmp_path).stdout == ""


def settings_env(tmp_path: Path, recipients: str) -> dict[str, str]:
    return {"SUDO_BACKUP_DIR": str(tmp_path / "backups"), "SUDO_BACKUP_RECIPIENTS": recipients}


def test_a_night_without_recipients_or_a_provisioner_fails_and_says_so(tmp_path: Path):
    result = run("sudoctl", "backup", "--all", state=tmp_path, env=settings_env(tmp_path, ""))
    assert result.returncode == 1 and "backup.recipients is empty" in result.stderr, result.stderr
    status = backups.read_status(tmp_path)
    assert status is not None and not status.ok and status.last_success_at is None
    assert backups.summary(status)["state"] == "failed"

    key = str(pyrage.x25519.Identity.generate().to_public())
    family = run("sudoctl", "families", "add", "Hopper", state=tmp_path).stdout.strip()
    result = run("sudoctl", "backup", "--all", state=tmp_path, env=settings_env(tmp_path, key))
    assert result.returncode == 1 and f"{family}: FAILED: " in result.stderr, result.stderr
    [night] = (tmp_path / "backups").iterdir()
    manifest = json.loads((night / "manifest.json").read_text())
    assert manifest["families"] == [] and manifest["errors"][0]["family"] == family
    assert manifest["recipients"] == [key]
    listed = run("sudoctl", "backup", "list", state=tmp_path, env=settings_env(tmp_path, key))
    assert f"{night.name}  0 family(ies)  0 bytes" in listed.stdout and "1 FAILED" in listed.stdout
    assert backups.read_status(tmp_path).failed == 1

    (tmp_path / "file").write_text("")
    result = run(
        "sudoctl",
        "backup",
        "--all",
        state=tmp_path,
        env={"SUDO_BACKUP_DIR": str(tmp_path / "file")} | {"SUDO_BACKUP_RECIPIENTS": key},
    )
    assert result.returncode == 1 and f"cannot write to backup.dir {tmp_path / 'file'}" in result.stderr


def test_backup_arguments_and_an_unreadable_dir_get_clear_errors(tmp_path: Path):
    for args, why in (
        ((), "backup takes a family's id, list, verify FILE|NIGHT, or --all"),
        (("--all", "list"), "backup takes a family's id, list, verify FILE|NIGHT, or --all"),
        (("verify", "2026-12-06"), "backup verify takes one FILE or NIGHT and --identity KEYFILE"),
    ):
        result = run("sudoctl", "backup", *args, state=tmp_path)
        assert result.returncode == 1 and why in result.stderr, result.stderr
    listed = run("sudoctl", "backup", "list", state=tmp_path, env={"SUDO_BACKUP_DIR": str(tmp_path / "none")})
    assert listed.returncode == 1 and f"cannot read backup.dir {tmp_path / 'none'}" in listed.stderr


def test_the_status_reads_as_failed_once_a_night_is_missed():
    now = 1_800_000_000.0
    good = backups.Status(last_run_at=now - 3600, last_success_at=now - 3600, ok=True, families=3)
    assert backups.summary(good, now) | {"error": None} == {
        "state": "ok",
        "last_run_at": now - 3600,
        "last_success_at": now - 3600,
        "families": 3,
        "error": None,
    }
    missed = backups.summary(good, now + 2 * 86400)
    assert missed["state"] == "failed" and "sudo-backup.timer" in missed["error"]
    assert backups.summary(None)["state"] == "none"


def test_pruning_removes_only_nights_past_retention(tmp_path: Path):
    from sudoctl.backup import prune

    for n in range(20):
        (tmp_path / (D(2026, 12, 6) - datetime.timedelta(days=n)).isoformat()).mkdir()
    (tmp_path / "notes").mkdir()
    prune(tmp_path, keep_daily=3, keep_weekly=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2026-11-29",
        "2026-12-04",
        "2026-12-05",
        "2026-12-06",
        "notes",
    ]
