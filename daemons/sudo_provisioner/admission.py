"""Who may start a runtime, and when: spawn slots by priority, and the host's memory.

After a host reboot every home device beats at once, and each beat warms its family's runtime.
A family that writes meanwhile must not queue behind a hundred warm-ups nobody waits for, so
the slots go first to whoever waits, then to restart-all's recreations, then to warm-ups; and a
warm-up starts only while the host has the memory one more runtime may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


class Priority(enum.IntEnum):
    WAITING = 0
    """Someone waits on it: a chat, a WhatsApp message, a voice turn, the integrations page."""
    RECREATE = 1
    """restart-all, or a runtime that died on its own, made again."""
    WARM_UP = 2
    """A home device's heartbeat: nobody is waiting yet."""


@dataclass
class Claim:
    """One spawn's place in the queue for a slot. Its priority can rise while it waits (someone
    comes to wait on a family whose warm-up is queued), never fall."""

    priority: Priority

    def escalate(self, priority: Priority) -> None:
        self.priority = min(self.priority, priority)


class Slots:
    """A semaphore whose waiters are served by their claim's priority, then in the order they
    came; and no warm-up starts while a spawn someone waits on runs, so that spawn has the
    host's cores to itself (Hermes's start is CPU-bound). Waiters are few (one per family at
    most), so the next is found by a scan."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._interactive = 0  # slots held by spawns someone waits on
        self._waiters: list[tuple[int, Claim, asyncio.Future[Priority]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, claim: Claim) -> AsyncIterator[None]:
        granted = await self._acquire(claim)
        try:
            yield
        finally:
            self._release(granted)

    def waiting(self) -> int:
        return len(self._waiters)

    async def _acquire(self, claim: Claim) -> Priority:
        entry = (next(self._order), claim, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        self._dispatch()
        try:
            return await entry[2]
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif not entry[2].cancelled():  # handed a slot as it was cancelled: pass it on
                self._release(entry[2].result())
            raise

    def _release(self, granted: Priority) -> None:
        self._free += 1
        self._interactive -= granted == Priority.WAITING
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand the free slots to the first waiters that may start now."""
        while self._free > 0:
            self._waiters = [e for e in self._waiters if not e[2].done()]  # cancelled meanwhile
            ready = [e for e in self._waiters if e[1].priority < Priority.WARM_UP or not self._interactive]
            if not ready:
                return
            entry = min(ready, key=lambda e: (e[1].priority, e[0]))
            self._waiters.remove(entry)
            self._free -= 1
            self._interactive += entry[1].priority == Priority.WAITING
            entry[2].set_result(entry[1].priority)


def memory_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes the host can give without swapping (MemAvailable; in an LXC, lxcfs's own)."""
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{meminfo} has no MemAvailable line")
    return int(match[1]) * 1024
