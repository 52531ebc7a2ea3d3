"""The reliability suite's figures: what each test tried and what it got back.

Tests record into FIGURES (through the `figures` fixture of tests/reliability). At the end of
the run they are written as JSON to $SUDO_RELIABILITY_REPORT (default: sudo-reliability.json in
the temporary directory) and printed. Under pytest-xdist each worker sends its figures to the
controller, which prints them all (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FULL = os.environ.get("SUDO_RELIABILITY") == "full"


@dataclass
class Tally:
    """One test's figures: inputs tried, the responses they got, and anything else worth a number."""

    inputs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)

    def tried(self, outcome: int | str, count: int = 1) -> None:
        """An input was sent and got `outcome`: an HTTP status, or a word such as "reset"."""
        self.inputs += count
        self.statuses[str(outcome)] += count

    def as_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "statuses": dict(sorted(self.statuses.items()))} | self.notes


class Figures:
    def __init__(self) -> None:
        self.tests: dict[str, Tally] = {}
        self.from_workers: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str) -> Tally:
        return self.tests.setdefault(name, Tally())

    def own(self) -> dict[str, dict[str, Any]]:
        """This process's figures, by test."""
        return {name: t.as_json() for name, t in self.tests.items()}

    def report(self) -> dict[str, Any]:
        tests = dict(sorted((self.own() | self.from_workers).items()))
        return {"full": FULL, "inputs": sum(t["inputs"] for t in tests.values()), "tests": tests}

    def write(self, terminalreporter: Any) -> None:
        """Write the report's file and print it, if any test recorded figures."""
        report = self.report()
        if not report["tests"]:
            return
        default = Path(tempfile.gettempdir()) / "sudo-reliability.json"
        path = Path(os.environ.get("SUDO_RELIABILITY_REPORT") or default)
        path.write_text(json.dumps(report, indent=1) + "\n")
        terminalreporter.section("reliability figures")
        for name, tally in report["tests"].items():
            terminalreporter.write_line(f"FIGURES {json.dumps({'test': name} | tally, sort_keys=True)}")
        terminalreporter.write_line(f"{report['inputs']} inputs tried in all; written to {path}")


FIGURES = Figures()
