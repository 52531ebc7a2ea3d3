"""What the family's agent says first, said out loud in a home device's room.

The agent's messages to its sudo_voice platform (a cron job's "time to leave for school") reach
sudo-api through the family's sudo_chat outbox; sudo-api keeps one announcement for each home
device online then (see sudo_api.announcements). Each room's session holds a long poll on
sudo-api for its device's announcements, says each one as it comes (`AgentSession.say`, left out
of the conversation: Hermes keeps it in the session that wrote it, and the room's turns are not
its answers), and acknowledges it once said. sudo-api hands an announcement out until it is
acknowledged, so a bridge that restarts says again only what it was saying when it stopped and
loses nothing; an acknowledgement that fails is sent again before anything else is asked, so a
sudo-api restart makes nothing said twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from livekit.agents import AgentSession
from prometheus_client import Counter

from sudo_core.logs import fields

from .sudo_api import Announcement, SudoApi, SudoApiError

log = logging.getLogger(__name__)

POLL_SEC = 25.0
"""How long each poll lets sudo-api wait for an announcement (seconds; it allows up to 60)."""
RETRY_SEC = (1.0, 30.0)
"""Backoff while sudo-api cannot be reached: first and longest wait (seconds)."""
CLOSING_SEC = 1.0
"""After an announcement was cut off, how long to wait to see whether its session is closing
(seconds): the session's close event comes after it has interrupted what it was saying."""

ANNOUNCED = Counter(
    "sudo_voice_announcements_total",
    "Announcements of the families' agents said in a room, whole or interrupted",
    ["result"],
)


class Announcer:
    """Says a room's announcements on its session, from `attach` until `aclose`."""

    def __init__(self, api: SudoApi, room: str) -> None:
        self.api = api
        self.room = room
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    def attach(self, session: AgentSession) -> None:
        """Start saying the room's announcements on `session`, which must have started."""
        session.on("close", lambda _: self._closed.set())
        self._task = asyncio.create_task(self._run(session), name=f"announce-{self.room}")

    async def aclose(self) -> None:
        """Stop; an announcement being said stays owed to the next session of the room."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, session: AgentSession) -> None:
        failures = 0
        while True:
            try:
                pending = await self.api.announcements(self.room, POLL_SEC)
            except SudoApiError as exc:
                if exc.status == 404:  # the device was revoked: nothing more is coming
                    log.info(f"room {self.room} is no paired device's: no announcements", extra=self._fields)
                    return
                failures += 1
                await self._retry_later(failures, f"cannot ask for announcements: {exc}")
                continue
            failures = 0
            for announcement in pending:
                if not await self._say(session, announcement):
                    log.info(
                        f"room {self.room}: the session closed; announcements stay owed", extra=self._fields
                    )
                    return
                await self._acknowledge(announcement)

    async def _say(self, session: AgentSession, announcement: Announcement) -> bool:
        """Say it; whether it was heard, or not (the session closed first, or meanwhile)."""
        try:
            handle = session.say(announcement.text, add_to_chat_ctx=False)
        except RuntimeError:  # the session is closing
            return False
        await handle.wait_for_playout()
        if handle.interrupted:
            # Spoken over by someone at home, it was heard there; cut off by its room closing, not.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), CLOSING_SEC)
            if self._closed.is_set():
                return False
        ANNOUNCED.labels("interrupted" if handle.interrupted else "said").inc()
        log.info(f"room {self.room}: said announcement {announcement.id}", extra=self._fields)
        return True

    async def _acknowledge(self, announcement: Announcement) -> None:
        """Tell sudo-api it was said, until it has heard it (or has no such announcement any
        more: given up meanwhile, or its device revoked)."""
        failures = 0
        while True:
            try:
                await self.api.announcement_spoken(self.room, announcement.id)
                return
            except SudoApiError as exc:
                if exc.status == 404:
                    return
                failures += 1
                await self._retry_later(failures, f"cannot acknowledge {announcement.id}: {exc}")

    async def _retry_later(self, failures: int, problem: str) -> None:
        first, longest = RETRY_SEC
        wait = min(longest, first * 2 ** (failures - 1))
        log.warning(f"room {self.room}: {problem}; again in {wait:.0f} s", extra=self._fields)
        await asyncio.sleep(wait)

    @property
    def _fields(self) -> dict[str, object]:
        return fields(room=self.room)
