"""One family's voice conversation: VAD, speech-to-text, the family's agent, text-to-speech.

The session is built the same way whether its audio comes from a LiveKit room (worker.py) or
from anywhere else that speaks livekit-agents' AudioInput/AudioOutput (the tests feed it a
recording), so everything but the WebRTC transport is the code that runs in production.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from livekit.agents import (
    Agent,
    AgentSession,
    AgentStateChangedEvent,
    FlushSentinel,
    ModelSettings,
    UserInputTranscribedEvent,
    UserStateChangedEvent,
    llm,
    vad,
)

from sudo_core.config import VoiceSettings

from . import speech
from .hermes import STILL_THINKING, VOICE_PROMPT, AgentUnavailable, FamilyRuntime, HermesLLM
from .sudo_api import Family

log = logging.getLogger(__name__)


def load_vad(settings: VoiceSettings) -> vad.VAD:
    """The turn's VAD: a pause of end_of_turn_sec ends a turn."""
    return speech.silero_vad(settings.end_of_turn_sec)


def build_session(
    settings: VoiceSettings,
    family: Family,
    runtime: FamilyRuntime,
    vad_model: vad.VAD,
    gateway_url: str,
) -> AgentSession:
    hermes = HermesLLM(
        runtime,
        session_id=f"voice-{family.id.hex}-{int(time.time())}",
        slow_reply_sec=settings.slow_reply_sec,
        reply_timeout_sec=settings.reply_timeout_sec,
    )
    session = AgentSession(
        stt=speech.make_stt(settings, gateway_url, family.gateway_key),
        vad=vad_model,
        llm=hermes,
        tts=speech.make_tts(settings, gateway_url, family.gateway_key),
        turn_handling={
            # Turns end on the host's VAD alone: the default turn detector asks LiveKit's cloud.
            "turn_detection": "vad",
            "endpointing": {"min_delay": 0.0},
            # Speaking over the agent stops it; a cough (under 0.3 s) does not.
            "interruption": {"enabled": True, "mode": "vad", "min_duration": 0.3},
            "preemptive_generation": {"enabled": False},
        },
        user_away_timeout=None,
        # Echo is the device's to cancel (sudo-edge ducks its microphone while it plays).
        aec_warmup_duration=None,
    )

    def on_user_state(event: UserStateChangedEvent) -> None:
        log.debug(f"family {family.id}: the family is {event.new_state}")
        if event.new_state == "speaking":
            hermes.prepare_turn()

    def on_transcript(event: UserInputTranscribedEvent) -> None:
        # How much was heard, never what: the family's words stay out of the journal.
        if event.is_final:
            log.debug(f"family {family.id}: heard {len(event.transcript.split())} words")

    def on_agent_state(event: AgentStateChangedEvent) -> None:
        log.debug(f"family {family.id}: the agent is {event.new_state}")

    session.on("user_state_changed", on_user_state)
    session.on("user_input_transcribed", on_transcript)
    session.on("agent_state_changed", on_agent_state)
    return session


class VoiceAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions=VOICE_PROMPT)

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterator[llm.ChatChunk | str | FlushSentinel]:
        """The agent's words; "still thinking" is spoken at once, not held back until the
        sentence after it shows where it ends."""
        async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
            yield chunk
            if isinstance(chunk, llm.ChatChunk) and chunk.delta and chunk.delta.content == STILL_THINKING:
                yield FlushSentinel()


def voice_agent() -> Agent:
    return VoiceAgent()


async def wake(runtime: FamilyRuntime) -> None:
    """Wake the family's agent as the conversation starts, so the first turn finds it ready."""
    try:
        await runtime.get()
    except AgentUnavailable as exc:
        log.warning(f"family {runtime.family}: agent not woken yet: {exc}")


def start_waking(runtime: FamilyRuntime) -> asyncio.Task[None]:
    return asyncio.create_task(wake(runtime), name=f"wake-{runtime.family}")
