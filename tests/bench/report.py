"""How every benchmark reports: one JSON object per line, each figure with its same-run baseline."""

from __future__ import annotations

import json


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
