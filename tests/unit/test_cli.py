"""The console scripts as an operator runs them, without Docker: families, and clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(tool: str, *args: str, state: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {
        "SUDO_CONFIG": "",
        "SUDO_CORE_STATE_DIR": str(state),
        "SUDO_PROVISIONER_SOCKET": str(state / "nobody-listens.sock"),
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
