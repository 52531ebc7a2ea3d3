"""Writes sudoctl's manual page from its argparse parser, so that the page never drifts from the
command line: debian/rules runs it with the Python of the virtualenv it has just built.

    python3 tools/manpage.py > sudoctl.1

Every command, down to the subcommands (`sudoctl families add`), gets a section: its synopsis as
argparse writes it, its description (or help), and each argument with its help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from importlib.metadata import version

SEE_ALSO = r"""Configuration: \fI/etc/sudo/sudo.toml\fR; secrets under \fI/etc/sudo/credentials/\fR.
The operator's guide: README.md in \fI/usr/share/doc/sudo-core/\fR."""


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes and minus signs escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every (sub)command under `parser`, depth first: its words after the program's name, its
    parser and the help it was added with."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from commands(sub, (*path, name))


def synopsis(parser: argparse.ArgumentParser) -> str:
    """The usage line argparse prints, on one line, without its -h."""
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    return usage.replace(" [-h]", "")


def arguments(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            takes = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
            name = ", ".join(f"\\fB{roff(option)}\\fR{roff(takes)}" for option in action.option_strings)
        else:
            shown = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest
            name = f"\\fI{roff(action.metavar or shown)}\\fR"
        about = action.help or ""
        if action.choices and action.metavar:
            about += f" (one of: {', '.join(map(str, action.choices))})"
        yield f".TP\n{name}\n{roff(about.strip())}".rstrip()


def render(parser: argparse.ArgumentParser, package: str) -> str:
    name = parser.prog
    lines = [
        f'.TH {name.upper()} 1 "" "{package} {version(package)}" "Sudo"',
        ".SH NAME",
        f"{name} \\- {roff(parser.description.split(': ', 1)[-1].rstrip('.'))}",
        ".SH SYNOPSIS",
        f"\\fB{name}\\fR \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
        ".SH COMMANDS",
    ]
    for path, sub, help_text in commands(parser):
        lines.append(f'.SS "{name} {" ".join(path)}"')
        lines.append(f".B {roff(synopsis(sub))}")
        about = sub.description or help_text
        if about:
            lines += [".PP", roff(about)]
        lines.extend(arguments(sub))
    lines += [".SH SEE ALSO", SEE_ALSO]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from sudoctl.__main__ import build_parser

    sys.stdout.write(render(build_parser(), "sudo-family"))
