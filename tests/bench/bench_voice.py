"""Benchmark: what the voice bridge adds between the end of speech and the first reply audio.

The voice session is the production one (silero VAD, streaming pocketsphinx, espeak-ng) fed by
a recording paced in real time, as a microphone would be. The family's agent is replaced by an
instant OpenAI-style stream on 127.0.0.1 that records when each request came and when its
first token left, so the agent's own time is measured and taken out: what is left is the
bridge's. Prints one JSON object per line:

- voice_bridge_added_p50 / _p90: end of speech to first reply audio, minus the agent's time
  to its first token, against the baseline of the same engines run directly on the same audio
  after the speech ended (the configured end-of-turn silence, a whole-utterance pocketsphinx
  decode, espeak-ng synthesizing the reply): below 1 means decoding while the person speaks
  pays off;
- voice_bridge_processing_p50 / _p90: the same minus the configured end-of-turn silence
  (voice.end_of_turn_sec), the bridge's own work (goal: under 300 ms), against the same
  baseline minus that silence.

    make bench        (or: .venv/bin/python tests/bench/bench_voice.py)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import emit, percentile
from voice_audio import CapturedOutput, RecordingInput, spoken, wait_until

from sudo_core.config import VoiceSettings
from sudo_core.families import identity_proof
from sudo_voice_bridge import speech
from sudo_voice_bridge.hermes import FamilyRuntime
from sudo_voice_bridge.session import build_session, load_vad, voice_agent
from sudo_voice_bridge.sudo_api import Family, Runtime

SETTINGS = VoiceSettings(stt="pocketsphinx", tts="espeak")
QUESTIONS = [
    "what is the weather tomorrow",
    "what is on my shopping list",
    "remind me to buy milk",
    "what time is it",
    "tell me a joke",
    "turn on the lights",
    "how old is the moon",
    "play some music",
]
ANSWER = "Sure. It will be sunny and warm."
KEY = "bench-key"


class InstantAgent:
    """Answers every turn at once, recording (received, first token sent) per request."""

    def __init__(self) -> None:
        self.turns: list[tuple[float, float]] = []

    async def identity(self, request: web.Request) -> web.Response:
        """As the sudo_chat plugin proves which family a container serves."""
        return web.json_response({"proof": identity_proof(KEY, request.query["nonce"])})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(ANSWER.split(" ")):
            chunk = {"choices": [{"delta": {"content": word + " "}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if i == 0:
                self.turns.append((received, time.monotonic()))
        await response.write(b"data: [DONE]\n\n")
        return response


async def direct_engines(pcm: bytes) -> float:
    """The engines alone, run after the speech ended: silence, batch decode, first synthesis."""
    decoder = speech._decoder()
    started = time.perf_counter()
    speech._decode_all(decoder, pcm)
    await speech.espeak_wav(ANSWER.split(".")[0] + ".", SETTINGS.espeak_voice)
    return SETTINGS.end_of_turn_sec + time.perf_counter() - started


async def main() -> None:
    agent = InstantAgent()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", agent.completions)
    app.router.add_get("/identity", agent.identity)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def ensure(_: uuid.UUID) -> Runtime:
        return Runtime(url, KEY, f"{url}/identity")

    family = Family(uuid.uuid4(), "Bench", "room_bench", "unused")
    session = build_session(SETTINGS, family, FamilyRuntime(family.id, ensure), load_vad(SETTINGS), url)
    mic, speaker = RecordingInput(), CapturedOutput()
    session.input.audio, session.output.audio = mic, speaker
    await session.start(voice_agent())

    added, baseline = [], []
    for text in QUESTIONS * 2:
        pcm = spoken(text)
        baseline.append(await direct_engines(pcm))
        before = len(speaker.replies)
        mic.play(pcm, trailing_silence=0.2)
        answered = lambda n=before: len(speaker.replies) > n and session.agent_state == "listening"  # noqa: E731
        await wait_until(answered, 60, "the answer")
        received, first_token = agent.turns[-1]
        total = speaker.replies[before].first_audio_at - mic.speech_ended_at[-1]
        added.append(total - (first_token - received))
    await session.aclose()
    await session.llm.aclose()  # type: ignore[union-attr]
    await runner.cleanup()

    silence = SETTINGS.end_of_turn_sec
    for p in (50, 90):
        emit(f"voice_bridge_added_p{p}", percentile(added, p), percentile(baseline, p), turns=len(added))
        emit(
            f"voice_bridge_processing_p{p}",
            percentile(added, p) - silence,
            percentile(baseline, p) - silence,
            end_of_turn_sec=silence,
            goal=0.3,
        )


if __name__ == "__main__":
    asyncio.run(main())
