"""`sudoctl settings` and `sudoctl admins`: what a deploy script uses to hand over the LiveKit
settings and to leave an existing admin alone. Values come from stdin and are never printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_cli import run

from sudo_core import host_settings
from sudo_core.accounts import Accounts
from sudo_core.db import Database


def stored(state: Path) -> dict:
    db = Database(state / "sudo.db")
    try:
        return db.get_settings("")
    finally:
        db.close()


def test_settings_set_reads_the_value_from_stdin_and_never_prints_it(tmp_path: Path):
    secret = "s3cr3t-livekit-api-secret-value"
    url = run("sudoctl", "settings", "set", "livekit.url", state=tmp_path, stdin="wss://voice.example.org/\n")
    assert url.stdout == "livekit.url changed\n"
    made = run("sudoctl", "settings", "set", "livekit.api_secret", state=tmp_path, stdin=secret + "\n")
    assert made.returncode == 0, made.stderr
    assert made.stdout == "livekit.api_secret changed\n"
    again = run("sudoctl", "settings", "set", "livekit.api_secret", state=tmp_path, stdin=secret + "\n")
    assert again.stdout == "livekit.api_secret unchanged\n"
    # Stored as the admin page stores them (the URL without its trailing slash).
    assert stored(tmp_path) == {"livekit.api_secret": secret, "livekit.url": "wss://voice.example.org"}

    listed = run("sudoctl", "settings", "list", state=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "livekit.api_secret = set" in lines and "llm.api_key = not set" in lines
    assert "livekit.url = wss://voice.example.org" in lines
    assert len(lines) == len(host_settings.FIELDS)
    # The secret goes to the address it was set for, and to no other: moving it clears it.
    moved = run(
        "sudoctl", "settings", "set", "livekit.url", state=tmp_path, stdin="wss://other.example.org\n"
    )
    assert moved.stdout == "livekit.url changed\n" and "livekit.api_secret is cleared" in moved.stderr
    assert stored(tmp_path)["livekit.api_secret"] == ""
    for result in (made, again, url, listed, moved):
        assert secret not in result.stdout + result.stderr


def test_settings_set_refuses_bad_values_and_unknown_keys_and_changes_nothing(tmp_path: Path):
    bad = run("sudoctl", "settings", "set", "livekit.url", state=tmp_path, stdin="voice.example.org\n")
    assert bad.returncode == 2
    assert "LiveKit server URL: must be a URL" in bad.stderr
    unknown = run("sudoctl", "settings", "set", "livekit.nope", state=tmp_path, stdin="x\n")
    assert unknown.returncode == 2 and "invalid choice: 'livekit.nope'" in unknown.stderr
    assert stored(tmp_path) == {}
    # An empty line keeps a stored secret (as the admin page does) and clears anything else.
    run("sudoctl", "settings", "set", "livekit.api_secret", state=tmp_path, stdin="kept-secret\n")
    run("sudoctl", "settings", "set", "livekit.api_key", state=tmp_path, stdin="APIkey\n")
    for key in ("livekit.api_secret", "livekit.api_key"):
        assert run("sudoctl", "settings", "set", key, state=tmp_path, stdin="\n").returncode == 0
    assert stored(tmp_path) == {"livekit.api_secret": "kept-secret", "livekit.api_key": ""}


def test_settings_set_of_the_model_says_the_runtimes_need_recreating(tmp_path: Path):
    result = run("sudoctl", "settings", "set", "llm.model", state=tmp_path, stdin="some-model\n")
    assert result.returncode == 0, result.stderr
    assert "sudoctl restart-all" in result.stdout


def test_admins_lists_only_admin_emails(tmp_path: Path):
    assert run("sudoctl", "admins", state=tmp_path).stdout == ""
    made = run(
        "sudoctl",
        "create-admin",
        "--email",
        "root@example.org",
        "--password-stdin",
        state=tmp_path,
        stdin="a long enough password\n",
    )
    assert made.returncode == 0, made.stderr
    db = Database(tmp_path / "sudo.db")
    try:
        asyncio.run(Accounts(db, 1).sign_up("member@example.org", "another long password", "Ann", "Fam"))
    finally:
        db.close()
    assert run("sudoctl", "admins", state=tmp_path).stdout == "root@example.org\n"
