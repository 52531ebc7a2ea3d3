"""The console scripts as an operator runs them, without Docker: families, and clear failures."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

from sudo_core.accounts import Accounts
from sudo_core.db import Database
from sudo_core.members import Members

BIN = Path(sys.executable).parent


def run(
    tool: str, *args: str, state: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = os.environ | {
        "SUDO_CONFIG": "",
        "SUDO_CORE_STATE_DIR": str(state),
        "SUDO_PROVISIONER_SOCKET": str(state / "nobody-listens.sock"),
        **(env or {}),
    }
    return subprocess.run(
        [str(BIN / tool), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_sudoctl_adds_and_lists_families(tmp_path: Path):
    added = run("sudoctl", "families", "add", "Lovelace", state=tmp_path)
    assert added.returncode == 0, added.stderr
    family_id = added.stdout.strip()
    listed = run("sudoctl", "families", "list", state=tmp_path)
    assert family_id in listed.stdout
    assert "Lovelace" in listed.stdout
    assert "never" in listed.stdout


def test_sudoctl_refuses_a_bad_id_before_reaching_anything(tmp_path: Path):
    result = run("sudoctl", "ensure", "not-a-uuid", state=tmp_path)
    assert result.returncode == 1
    assert "must be a UUID" in result.stderr


def test_tools_say_where_the_provisioner_is_missing(tmp_path: Path):
    for tool, args in (("sudo-reaper", ()), ("sudoctl", ("runtimes",))):
        result = run(tool, *args, state=tmp_path)
        assert result.returncode == 1, tool
        assert "nobody-listens.sock" in result.stderr, tool


def test_a_bad_config_stops_every_daemon_with_the_key(tmp_path: Path):
    config = tmp_path / "sudo.toml"
    config.write_text("[runtime]\nidle_sec = 'soon'\n")
    for tool in ("sudo-provisioner", "sudo-gateway", "sudo-reaper", "sudo-api"):
        result = subprocess.run(
            [str(BIN / tool)],
            env=os.environ | {"SUDO_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, tool
        assert f"{tool}: runtime.idle_sec" in result.stderr, tool


def test_sudoctl_creates_an_admin_with_a_password_from_stdin(tmp_path: Path):
    args = ("create-admin", "--email", "root@example.org", "--password-stdin")
    short = run("sudoctl", *args, state=tmp_path, stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    made = run("sudoctl", *args, state=tmp_path, stdin="a long enough password\n")
    assert made.returncode == 0, made.stderr
    assert "admin root@example.org created" in made.stdout
    again = run("sudoctl", *args, state=tmp_path, stdin="a long enough password\n")
    assert again.returncode == 2 and "already exists" in again.stderr


def backup_file(path: Path, family: str, tamper=lambda rows: None) -> Path:
    """A backup as `sudoctl backup` writes it: a family with one account, and a tiny volume
    (`tamper` edits its rows first, as a forger would)."""
    rows = {
        "format": "sudo-family-backup",
        "version": 1,
        "family": {"id": family, "name": "Hopper", "created_at": 1.0, "last_active_at": None},
        "accounts": [
            {
                "id": str(uuid.uuid4()),
                "email": "grace@example.org",
                "password_hash": "$argon2id$not-checked-here",
                "display_name": "Grace",
                "family_id": family,
                "is_admin": 0,
                "created_at": 1.0,
            }
        ],
        "messages": [],
        "agent_cursors": [],
        "devices": [],
        "whatsapp_numbers": [],
    }
    tamper(rows)
    volume = io.BytesIO()
    with tarfile.open(fileobj=volume, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("."))
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("family.json", json.dumps(rows).encode()), ("volume.tar", volume.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sudoctl_restore_refuses_clearly_and_leaves_nothing_behind(tmp_path: Path):
    family = str(uuid.uuid4())
    good = backup_file(tmp_path / "good.tar.gz", family)
    (tmp_path / "junk").write_bytes(b"junk")
    other = str(uuid.uuid4())
    for args, why in (
        ((family, str(tmp_path / "junk")), "junk is not a readable Sudo backup: not a gzip file"),
        ((family, str(tmp_path / "missing")), "missing is not a readable Sudo backup: [Errno 2]"),
        ((other, str(good)), f"this backup holds family {family}, not {other}"),
        # The rows went in, the volume could not: the rows are taken out again.
        ((family, str(good)), "cannot reach the provisioner at"),
    ):
        result = run("sudoctl", "restore", *args, state=tmp_path)
        assert result.returncode == 1, result.stderr
        assert why in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert run("sudoctl", "families", "list", state=tmp_path).stdout == ""


def test_sudoctl_restore_refuses_a_forged_file_and_writes_nothing(tmp_path: Path):
    """An id spelt in capitals is the family that exists (not a second one, and not one to
    write into without --replace); no admin comes in; no row points at another family."""
    family = run("sudoctl", "families", "add", "Hopper", state=tmp_path).stdout.strip()
    other = run("sudoctl", "families", "add", "Other", state=tmp_path).stdout.strip()

    def admin(rows: dict) -> None:
        rows["accounts"][0]["is_admin"] = 1

    def foreign_member(rows: dict) -> None:
        stranger = str(uuid.uuid4())
        rows["messages"] = [{"id": "m1", "family_id": family, "account_id": stranger, "role": "user"}]

    for tamper, why in (
        (lambda rows: rows["family"].update(id=family.upper()), f"family {family} already exists here"),
        (admin, "an account is the host's admin"),
        (foreign_member, "messages name an account that is not the family's"),
        (
            lambda rows: rows["accounts"][0].update(family_id=other),
            f"accounts are not all rows of family {family}",
        ),
    ):
        forged = backup_file(tmp_path / "forged.tar.gz", family, tamper)
        result = run("sudoctl", "restore", family, str(forged), state=tmp_path)
        assert result.returncode == 1 and why in result.stderr, result.stderr
    listed = run("sudoctl", "families", "list", state=tmp_path).stdout
    assert listed.count("\n") == 2 and family in listed and family.upper() not in listed


def test_sudoctl_backs_up_only_a_family_that_exists(tmp_path: Path):
    nobody = str(uuid.uuid4())
    result = run("sudoctl", "backup", nobody, "-o", str(tmp_path / "b.tar.gz"), state=tmp_path)
    assert result.returncode == 1 and f"no family {nobody}" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_sudoctl_disables_enables_and_deletes_a_family_and_hands_out_links(tmp_path: Path):
    family = run("sudoctl", "families", "add", "Hopper", state=tmp_path).stdout.strip()

    def listed() -> str:
        return run("sudoctl", "families", "list", state=tmp_path).stdout

    # Disabling marks the family, then stops its agent: without a provisioner it says which half failed.
    disabled = run("sudoctl", "families", "disable", family, state=tmp_path)
    assert (
        disabled.returncode == 1
        and "disabled" in disabled.stderr
        and "could not be stopped" in disabled.stderr
    )
    assert "DISABLED" in listed()
    assert run("sudoctl", "families", "enable", family, state=tmp_path).stdout == f"enabled {family}\n"
    assert "DISABLED" not in listed()
    unsure = run("sudoctl", "families", "delete", family, state=tmp_path)
    assert unsure.returncode == 2 and "--yes" in unsure.stderr
    failed = run("sudoctl", "families", "delete", family, "--yes", state=tmp_path)
    assert failed.returncode == 1 and "cannot reach the provisioner" in failed.stderr
    assert family in listed() and "DISABLED" not in listed(), "a delete that failed changes nothing"

    invite = run("sudoctl", "invite", "--url", "https://sudo.example/", state=tmp_path)
    assert invite.stdout.startswith("https://sudo.example/join/") and "valid 7 days" in invite.stderr
    made = run(
        "sudoctl",
        "create-admin",
        "--email",
        "root@example.org",
        "--password-stdin",
        state=tmp_path,
        stdin="a long password\n",
    )
    assert made.returncode == 0, made.stderr
    link = run("sudoctl", "reset-link", "root@example.org", "--url", "https://sudo.example", state=tmp_path)
    assert link.stdout.startswith("https://sudo.example/reset/"), link.stderr
    db = Database(tmp_path / "sudo.db")
    try:
        members = Members(Accounts(db, 1))
        assert members.invitation(invite.stdout.strip().rsplit("/", 1)[1]).family_id is None  # a new family
        target = members.accounts.reset_target(link.stdout.strip().rsplit("/", 1)[1])
        assert target.email == "root@example.org"
    finally:
        db.close()
    nobody = run("sudoctl", "reset-link", "nobody@example.org", state=tmp_path)
    assert nobody.returncode == 1 and "no account nobody@example.org" in nobody.stderr
