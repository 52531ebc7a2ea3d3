"""Every shell script of the repository is clean under shellcheck (warnings included)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHEBANG = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env bash", "#!/usr/bin/env sh")


def shell_scripts() -> list[Path]:
    """*.sh, and files starting with a sh or bash shebang, tracked or about to be."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    scripts = []
    for name in listed:
        path = ROOT / name
        if not path.is_file():
            continue
        with path.open("rb") as f:
            first = f.readline(64).decode(errors="replace").strip()
        if name.endswith(".sh") or first.startswith(SHEBANG):
            scripts.append(path)
    return scripts


def test_the_proxmox_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in shell_scripts()}
    assert {"proxmox/host-prep.sh", "proxmox/apply-features.sh", "proxmox/bootstrap.sh"} <= names
    assert "tests/images/build-image" in names, "scripts without .sh are found by their shebang"


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck_is_clean(script: Path):
    assert shutil.which("shellcheck"), "shellcheck is missing: apt-get install shellcheck (make deps does)"
    with script.open("rb") as f:
        has_shebang = f.read(2) == b"#!"
    # A script without a shebang (the containers' boot script) is run by /bin/sh.
    shell = [] if has_shebang else ["--shell=sh"]
    result = subprocess.run(
        ["shellcheck", "--external-sources", *shell, str(script)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
