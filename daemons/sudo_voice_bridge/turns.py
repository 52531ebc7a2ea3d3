"""Each voice turn, kept in the family's Home thread: what the room's device heard, and what the
agent answered out loud, reported to sudo-api once the answer has been spoken.

A report that fails is logged and dropped: the conversation never waits for it, nor stops.
"""

from __future__ import annotations

import asyncio
import logging

from livekit.agents import AgentSession, ConversationItemAddedEvent, llm

from sudo_core.logs import fields

from .hermes import STILL_THINKING
from .sudo_api import SudoApi

log = logging.getLogger(__name__)

CLOSE_SEC = 5.0
"""As the session ends, how long the reports still on their way may take (seconds)."""


class TurnReporter:
    def __init__(self, api: SudoApi, room: str) -> None:
        self.api = api
        self.room = room
        self._heard: list[str] = []
        """What was heard since the last answer (words the agent was cut off from answering too)."""
        self._last: asyncio.Task[None] | None = None

    def attach(self, session: AgentSession) -> None:
        session.on("conversation_item_added", self._on_item)

    def _on_item(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage):
            return
        text = (item.text_content or "").strip()
        if item.role == "user" and text:
            self._heard.append(text)
        elif item.role == "assistant" and self._heard:
            # The bridge's "still thinking" is filler: the answer is what followed it.
            answered = text.removeprefix(STILL_THINKING.strip()).strip()
            if not answered:
                return
            heard, self._heard = "\n".join(self._heard), []
            report = self._report(self._last, heard, answered)
            self._last = asyncio.create_task(report, name=f"turn-{self.room}")

    async def _report(self, previous: asyncio.Task[None] | None, heard: str, answered: str) -> None:
        if previous is not None:
            await previous  # the turns in the order they were said (a report never raises)
        try:
            await self.api.voice_turn(self.room, heard, answered)
        except Exception as exc:  # whatever it was, the conversation goes on
            log.warning(f"room {self.room}: a voice turn was not kept: {exc!r}", extra=fields(room=self.room))

    async def aclose(self) -> None:
        """Give the last reports a moment to arrive."""
        if self._last is not None:
            await asyncio.wait({self._last}, timeout=CLOSE_SEC)
