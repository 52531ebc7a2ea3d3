"""sudoctl's manual page, written from its parser by tools/manpage.py as debian/rules writes it:
every command and subcommand of the parser has its section, with each of its options."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from sudoctl.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/manpage.py"


def sections(page: str) -> dict[str, str]:
    """The page's subsections by title, as plain text (roff's escapes and fonts undone)."""
    plain = re.sub(r"\\f[BIR]|\\&", "", page).replace("\\-", "-").replace("\\e", "\\")
    parts = re.split(r'^\.SS "(.*)"$', plain, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def every_command(parser: argparse.ArgumentParser, words: str) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{words} {name}"] = sub
                found |= every_command(sub, f"{words} {name}")
    return found


def test_the_page_has_every_subcommand_with_its_options():
    page = subprocess.run(
        [sys.executable, str(TOOL)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemons")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert page.startswith(".TH SUDOCTL 1 ")
    written = sections(page)
    commands = every_command(build_parser(), "sudoctl")
    assert {"sudoctl families add", "sudoctl settings set", "sudoctl backup"} <= commands.keys()
    assert written.keys() == commands.keys()
    for words, parser in commands.items():
        options = {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
        missing = {o for o in options if not re.search(rf"(^|[ ,]){re.escape(o)}\b", written[words], re.M)}
        assert not missing, f"{words}: {missing}"
    assert "(one of: livekit.api_key, livekit.api_secret," in " ".join(
        written["sudoctl settings set"].split()
    )


def test_a_new_subcommand_gets_its_section():
    spec = importlib.util.spec_from_file_location("manpage", TOOL)
    manpage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manpage)
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new = sub.add_parser("frobnicate", help="frobnicate the families")
    new.add_argument("--level", type=int, help="how hard")
    written = sections(manpage.render(parser, "sudo-family"))
    assert "frobnicate the families" in written["sudoctl frobnicate"]
    assert "--level LEVEL\nhow hard" in written["sudoctl frobnicate"]
