"""The device's state, kept in the state directory: its token from sudo-api, and the mute.

The file is written atomically (a temporary file in the same directory, fsynced, renamed over
the old one, the directory fsynced) with mode 0600: a power cut leaves the old token or the new
one, never half of either, and no other user of the Pi can read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("sudo-edge.state")

TOKEN_FILE = "device.json"
MUTE_FILE = "muted"


class StateError(RuntimeError):
    """The state directory cannot be used (missing and not creatable, or not writable)."""


@dataclass(frozen=True)
class PairedDevice:
    device_token: str
    """The bearer token sudo-api gave at pairing ("sd_dev_...")."""

    device_id: str | None = None
    """sudo-api's id of this device, for the log."""

    user_id: str | None = None
    """The family this device belongs to, for the log."""


class TokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / TOKEN_FILE

    def check(self) -> None:
        """Make sure the directory exists and is writable, so pairing can't end unsaved."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state directory {self.dir} cannot be created: {exc}") from exc
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.dir} is not writable by this user (uid {os.getuid()})")

    def load(self) -> PairedDevice | None:
        """The stored device, or None when there is none (or it is unreadable: pair again)."""
        try:
            data = json.loads(self.path.read_text())
            return PairedDevice(
                device_token=str(data["device_token"]),
                device_id=data.get("device_id"),
                user_id=data.get("user_id"),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s (%s): pairing again", self.path, exc)
            return None

    def save(self, device: PairedDevice) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{TOKEN_FILE}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(device), f)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        sync_dir(self.dir)

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            sync_dir(self.dir)


class MuteFlag:
    """Whether the family muted the device: a file that exists while it is muted, so a mute
    holds across restarts and power cuts (an unreadable directory reads as muted)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / MUTE_FILE

    def get(self) -> bool:
        try:
            return self.path.exists()
        except OSError:
            return True

    def set(self, muted: bool) -> None:
        if muted:
            self.path.touch(mode=0o600)
        else:
            self.path.unlink(missing_ok=True)
        sync_dir(self.path.parent)


def sync_dir(directory: Path) -> None:
    """Make a rename, creation or removal in `directory` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
