"""Logging to the journal with structured fields, or to stderr outside systemd.

    log.info("runtime spawned", extra=fields(family=uid, seconds=1.4))

sends MESSAGE plus FAMILY= and SECONDS= to journald (queryable with `journalctl FAMILY=...`);
on a terminal the same fields follow the message as key=value.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call carrying structured fields."""
    return {"fields": values}


class JournalHandler(logging.Handler):
    """journald's native protocol: one datagram per record, one field per line."""

    def __init__(self, identifier: str) -> None:
        super().__init__()
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            entries = {
                "MESSAGE": message,
                "PRIORITY": str(_PRIORITY.get(record.levelname, 6)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            for key, value in getattr(record, "fields", {}).items():
                entries[key.upper()] = str(value)
            self.sock.sendto(b"".join(_field(k, v) for k, v in entries.items()), JOURNAL_SOCKET)
        except Exception:
            self.handleError(record)


def _field(key: str, value: str) -> bytes:
    data = value.encode()
    if b"\n" in data:  # binary-safe form: name, newline, 64-bit little-endian length, data
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", {})
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def setup(identifier: str, level: str = "INFO") -> None:
    """Send the root logger to the journal when systemd connected us to it, else to stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
        handler: logging.Handler = JournalHandler(identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter(f"%(asctime)s {identifier} %(levelname)s %(message)s"))
    root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
