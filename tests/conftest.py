import json
import sys
from pathlib import Path
from typing import Any

import pytest

# tests/stack.py and tests/llm_stub.py are helpers shared by the tests and the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import FIGURES


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A pytest-xdist worker is done: keep the reliability figures it ran."""
    figures = getattr(node, "workeroutput", {}).get("reliability_figures")
    if figures:
        FIGURES.from_workers |= json.loads(figures)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    FIGURES.write(terminalreporter)
