"""`sudo-edge mute`, `unmute` and `status`: the running daemon's local control socket.

One request per connection: a command on one line ("mute", "unmute" or "status"), answered by
one line of JSON (`{"muted": true}`, or `{"error": "..."}`). The socket lives in the runtime
directory with mode 0600, so only root and the daemon's own user can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("sudo-edge.control")

COMMANDS = ("mute", "unmute", "status")


class ControlError(RuntimeError):
    """The daemon could not be asked (not running, no permission) or refused the command."""


class ControlServer:
    """Serves the socket for the daemon's life; `handle(command)` returns the answer."""

    def __init__(self, path: Path, handle: Callable[[str], Awaitable[dict]]) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that did not stop cleanly
        umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(umask)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            command = line.decode(errors="replace").strip()
            if command in COMMANDS:
                answer = await self.handle(command)
            else:
                answer = {"error": f"unknown command {command!r}: one of {', '.join(COMMANDS)}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("control connection dropped: %r", exc)
        finally:
            writer.close()


async def ask(path: Path, command: str, timeout_sec: float = 5.0) -> dict:
    """Send one command to the running daemon and return its answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_sec)
    except FileNotFoundError:
        raise ControlError(f"sudo-edge is not running (no {path})") from None
    except PermissionError:
        raise ControlError(f"no permission to use {path}: run it as root") from None
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"cannot reach sudo-edge at {path}: {exc}") from exc
    try:
        writer.write(command.encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), timeout_sec)
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError(f"sudo-edge gave no answer at {path}") from None
    if "error" in answer:
        raise ControlError(answer["error"])
    return answer
