"""How every benchmark reports: one JSON object per line, each figure with its same-run baseline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def emit(name: str, value: float, baseline: float, unit: str = "s", **extra) -> None:
    print(
        json.dumps(
            {
                "name": name,
                "value": round(value, 6),
                "baseline": round(baseline, 6),
                "unit": unit,
                "ratio": round(value / baseline, 3),
            }
            | extra
        ),
        flush=True,
    )


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class HostCpu:
    """The host's busy CPU time (every core, from /proc/stat) over a `with` block: how close a
    figure came to what the machine's cores allow at all."""

    def __enter__(self) -> HostCpu:
        self._busy, self._wall = _busy_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = _busy_seconds() - self._busy
        self.busy_fraction = self.seconds / ((time.monotonic() - self._wall) * (os.cpu_count() or 1))


def _busy_seconds() -> float:
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user already
