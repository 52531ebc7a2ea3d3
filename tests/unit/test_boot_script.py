"""boot.sh, run by the real /bin/sh on the host exactly as the container runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sudo_provisioner.spec import BOOT_SCRIPT, IDENTITY_MARKER, family_phrase

SECTION = "\u00a7"


def boot(home: Path, identity: str = "the Smith family", key: str = "k" * 32) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_HOME": str(home),
        "SUDO_CONFIG_YAML": '{"model": {"default": "m"}}',
        "SUDO_IDENTITY": f"{IDENTITY_MARKER}\n{identity}",
        "API_SERVER_KEY": key,
    }
    # the command it execs in place of the image's entrypoint: show what it was given
    result = subprocess.run(
        ["/bin/sh", "-c", BOOT_SCRIPT, "sudo-boot", "sh", "-c", 'echo "ran $0 $*"; env', "gateway", "run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_writes_config_and_execs_the_entrypoint_without_its_inputs(tmp_path: Path):
    out = boot(tmp_path)
    assert (tmp_path / "config.yaml").read_text() == '{"model": {"default": "m"}}\n'
    assert out.startswith("ran gateway run")
    assert "SUDO_CONFIG_YAML" not in out and "SUDO_IDENTITY" not in out
    assert f"API_SERVER_KEY={'k' * 32}" in out
    assert not list(tmp_path.rglob("*.sudo-new"))


def test_env_file_loses_every_managed_key_and_keeps_the_familys_own(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "API_SERVER_KEY=old\nexport API_SERVER_HOST=x\nOPENAI_API_KEY=leak\nFIRECRAWL_API_KEY=keep\n"
    )
    env_file.chmod(0o400)  # as a root-owned file from an older build would be to the agent
    boot(tmp_path, key="n" * 32)
    assert env_file.read_text() == f"FIRECRAWL_API_KEY=keep\nAPI_SERVER_KEY={'n' * 32}\n"


def test_memory_identity_is_replaced_and_the_agents_entries_survive(tmp_path: Path):
    memory = tmp_path / "memories" / "MEMORY.md"
    boot(tmp_path, identity="the Old family")
    assert memory.read_text() == f"{IDENTITY_MARKER}\nthe Old family\n{SECTION}\n"

    memory.write_text(memory.read_text() + f"likes tea\n{SECTION}\nbirthday in May\n")
    boot(tmp_path, identity="the New family")
    expected = f"{IDENTITY_MARKER}\nthe New family\n{SECTION}\nlikes tea\n{SECTION}\nbirthday in May\n"
    assert memory.read_text() == expected
    boot(tmp_path, identity="the New family")
    assert memory.read_text() == expected, "a second boot must change nothing"


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Smith", "the Smith family"),
        ("The Newcomers", "The Newcomers"),
        ("the lees", "the lees"),
        ("Garcia Family", "the Garcia Family"),
        ("Ōkawa", "the Ōkawa family"),
    ],
)
def test_the_identity_names_any_family_naturally(name: str, phrase: str):
    assert family_phrase(name) == phrase
    assert "the The" not in family_phrase(name) and "family family" not in family_phrase(name).lower()
