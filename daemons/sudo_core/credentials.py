"""Secrets: systemd credentials in production, generated files under the state dir in development.

Under systemd (`LoadCredential=`), `$CREDENTIALS_DIRECTORY` holds one file per secret and a
missing one is an installation error. Without it (`make run`, tests) a secret that may be
generated is created once under `<state_dir>/secrets/` with mode 0600 and reused after.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HOST_SECRET = "host-secret"
"""HMAC key from which every per-family key is derived."""

LLM_API_KEY = "llm-api-key"
"""The LLM provider's key; only the gateway reads it."""

SERVICE_TOKEN = "service-token"
"""What the voice bridge presents to sudo-api's service endpoints (it is no family)."""


class MissingCredential(RuntimeError):
    pass


def read_credential(name: str, state_dir: Path, *, generate: bool = False) -> str | None:
    """The secret `name`, or None if it is absent and may not be generated."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / name
        if path.exists():
            return path.read_text().strip()
        if generate:
            raise MissingCredential(
                f"credential {name!r} missing from $CREDENTIALS_DIRECTORY ({cred_dir}); "
                "check the unit's LoadCredential= line and the file it points at"
            )
        return None
    path = state_dir / "secrets" / name
    if not path.exists() and generate:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written aside then linked into place: a daemon starting at the same moment either
        # links first or reads the complete file, never a half-written one.
        tmp = path.with_name(f".{name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip() if path.exists() else None


def host_secret(state_dir: Path) -> bytes:
    value = read_credential(HOST_SECRET, state_dir, generate=True)
    assert value is not None
    return value.encode()
