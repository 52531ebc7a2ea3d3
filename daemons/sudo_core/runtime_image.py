"""Which Hermes image the runtimes run, the one before it, and an upgrade under way.

The provisioner alone writes `<core.state_dir>/runtime-image.json` (`sudoctl image upgrade`,
`rollback`); sudo-api reads it for /admin, sudoctl for `sudo image`. It is replaced whole and
synced to disk before the fleet changes, so a provisioner killed midway finds at its next start
what it was doing and finishes it (images.py). Until the first upgrade there is no file and the
runtimes run `runtime.image`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STATE_FILE = "runtime-image.json"
REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
"""What an image reference given to an upgrade may look like (sudo-hermes:0.20.0, name@sha256:...)."""
HISTORY = 10
"""Upgrades and rollbacks kept in the file, newest first."""


@dataclass(frozen=True)
class ImageRef:
    ref: str
    """The name the operator gave it (sudo-hermes:0.20.0)."""
    id: str
    """The content id it named then: what containers are created from, whatever the name
    points at later."""


@dataclass(frozen=True)
class Upgrade:
    """An upgrade (or a rollback) under way."""

    target: ImageRef
    before: ImageRef
    """The image the runtimes ran when it began: where a failed upgrade goes back to."""
    before_previous: ImageRef | None
    phase: str
    """"canary" (the runtimes are on `before`, one canary on `target`), "rolling" (`target` is
    current, the runtimes are being recreated on it) or "rolling back" (current is where the
    runtimes are going back to)."""
    families: tuple[str, ...]
    """The families whose runtimes ran when it began: they get one on the image it ends on."""
    started_at: float
    reason: str | None = None
    """Why it is rolling back."""


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    """"upgraded" or "rolled back"."""
    image: str
    """The image the runtimes run since."""
    from_image: str
    """The one they ran before (or, for a failed upgrade, the image it tried)."""
    reason: str | None = None
    failed: int = 0
    """Runtimes that failed to come back."""


@dataclass(frozen=True)
class ImageState:
    current: ImageRef | None = None
    """None: no upgrade ever happened, and runtime.image is the image."""
    previous: ImageRef | None = None
    upgrade: Upgrade | None = None
    history: tuple[Event, ...] = field(default=())

    def with_event(self, event: Event) -> ImageState:
        return replace(self, history=(event, *self.history)[:HISTORY])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageState:
        def image(value: dict | None) -> ImageRef | None:
            return ImageRef(**value) if value else None

        upgrade = data.get("upgrade")
        return cls(
            current=image(data.get("current")),
            previous=image(data.get("previous")),
            upgrade=Upgrade(
                **upgrade
                | {
                    "target": ImageRef(**upgrade["target"]),
                    "before": ImageRef(**upgrade["before"]),
                    "before_previous": image(upgrade.get("before_previous")),
                    "families": tuple(upgrade["families"]),
                }
            )
            if upgrade
            else None,
            history=tuple(Event(**e) for e in data.get("history", ())),
        )


class StateUnreadable(RuntimeError):
    """The state file exists but cannot be read: nothing should guess past it."""


def read(state_dir: Path) -> ImageState:
    """The state as last written; an empty one if no upgrade ever ran."""
    path = state_dir / STATE_FILE
    try:
        return ImageState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return ImageState()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StateUnreadable(f"{path} cannot be read: {exc}") from exc


def write(state_dir: Path, state: ImageState) -> None:
    """Replace the file whole, on disk before this returns (readable by group sudo-data: sudo-api)."""
    path = state_dir / STATE_FILE
    with tempfile.NamedTemporaryFile("w", dir=state_dir, prefix=f".{STATE_FILE}.", delete=False) as partial:
        try:
            json.dump(state.to_json(), partial, indent=1)
            partial.flush()
            os.fchmod(partial.fileno(), 0o640)
            os.fsync(partial.fileno())
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, path)
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def summary(state: ImageState, configured: str) -> dict[str, Any]:
    """What /admin and `sudoctl image` show: the current image and the previous one (by name
    and short id), an upgrade under way, and the last upgrades and rollbacks."""

    def shown(image: ImageRef | None) -> dict[str, str] | None:
        return {"ref": image.ref, "id": image.id.removeprefix("sha256:")[:12]} if image else None

    upgrade = state.upgrade
    return {
        "current": shown(state.current) or {"ref": configured, "id": None},
        "previous": shown(state.previous),
        "upgrade": {
            "target": upgrade.target.ref,
            "phase": upgrade.phase,
            "started_at": upgrade.started_at,
            "reason": upgrade.reason,
        }
        if upgrade
        else None,
        "history": [asdict(e) for e in state.history],
    }
