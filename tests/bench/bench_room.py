"""Benchmark: end of speech to first audio at the home device's speaker, through a LiveKit room.

The whole path of tests/home_room.py: sudo-edge's ALSA file microphone (after the wake word),
WebRTC through the test LiveKit server, the voice bridge (silero VAD, pocketsphinx, espeak-ng),
the family's real Hermes container with the stand-in LLM, and back to sudo-edge's ALSA file
speaker. The baseline, measured in the same run on the same family's Hermes: the bridge's
session fed the same questions directly (a recording in, a captured speaker out), no room and
no device. Prints JSON lines:

- room_first_audio_p50 / _p90: seconds, against that baseline (goal: p50 at most 1.0 s).

The speaker's figure is when the sound is in the speaker's file, which alsa-lib's `file` plugin
writes only once a whole ALSA buffer has been written after it (measured: 0.07-0.09 s after the
edge wrote the sound to ALSA, 0.02 s before it was due to play): a real speaker sounds it about
that much sooner.

    make bench        (or: .venv/bin/python tests/bench/bench_room.py)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_plane import pair, sign_up
from home_room import home_room
from report import emit, percentile
from stack import Stack
from voice_audio import CapturedOutput, RecordingInput, spoken, wait_until

from sudo_core.config import VoiceSettings
from sudo_voice_bridge.hermes import FamilyRuntime
from sudo_voice_bridge.session import build_session, load_vad, start_waking, voice_agent
from sudo_voice_bridge.sudo_api import SudoApi

QUESTIONS = ["what is the weather tomorrow", "what time is it", "tell me a joke", "what is on my list"]
ROUNDS = 2
SETTINGS = VoiceSettings(stt="pocketsphinx", tts="espeak", slow_reply_sec=8.0)


async def without_room(stack: Stack, room: str) -> list[float]:
    """The bridge's session on the family's Hermes, fed directly: the baseline."""
    async with SudoApi(stack.service_url, stack.service_token) as client:
        family = await client.family_of_room(room)
        assert family is not None
        runtime = FamilyRuntime(family.id, client.runtime)
        gateway = f"http://{stack.settings.runtime.host_address}:{stack.settings.gateway.port}/v1"
        session = build_session(SETTINGS, family, runtime, load_vad(SETTINGS), gateway)
        mic, speaker = RecordingInput(), CapturedOutput()
        session.input.audio, session.output.audio = mic, speaker
        await session.start(voice_agent())
        await start_waking(runtime)
        latencies = []
        try:
            for question in ["hello there", *QUESTIONS * ROUNDS]:  # the first turn warms up
                replies = len(speaker.replies)
                mic.play(spoken(question), trailing_silence=0.2)
                await wait_until(lambda r=replies: len(speaker.replies) > r, 60, "an answer")
                latencies.append(speaker.replies[replies].first_audio_at - mic.speech_ended_at[-1])
                await wait_until(lambda: session.agent_state == "listening", 60, "the end of the answer")
        finally:
            await session.aclose()
            await session.llm.aclose()  # type: ignore[union-attr]
        return latencies[1:]


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sudo-bench-room-") as tmp:
        stack = Stack(Path(tmp) / "stack", core={"log_level": "INFO"})
        try:
            stack.start_gateway()
            stack.start_provisioner()
            stack.start_api()
            async with aiohttp.ClientSession() as http:
                family = await sign_up(http, stack.api_url, "Bench")
                device_id, token = await pair(http, stack, family, "Kitchen")
            room_dir = Path(tmp) / "room"
            room_dir.mkdir()
            async with home_room(stack, room_dir, str(family.id), device_id, token) as home:
                await home.until(home.ready, 120, "the device and the agent to hear each other")
                await home.ask("hello there")  # a new Hermes session's first turn is slow
                latencies = [(await home.ask(question))[1] for question in QUESTIONS * ROUNDS]
            baseline = await without_room(stack, home.room_name)
            p50, p90 = percentile(latencies, 50), percentile(latencies, 90)
            base50, base90 = percentile(baseline, 50), percentile(baseline, 90)
            emit("room_first_audio_p50", p50, base50, samples=len(latencies), goal_sec=1.0)
            emit("room_first_audio_p90", p90, base90, samples=len(latencies))
        finally:
            stack.close()


if __name__ == "__main__":
    asyncio.run(main())
