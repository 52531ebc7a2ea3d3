"""The home device and the voice bridge meet in one LiveKit room (tests/home_room.py).

A spoken question goes into sudo-edge's ALSA file microphone in its own network namespace,
through the wake word and the room's WebRTC to the bridge, which asks the family's real Hermes
container (the LLM stand-in answering), and its spoken answer comes back through the room to
the edge's ALSA file speaker, where speech-to-text hears it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from control_plane import pair, sign_up
from home_room import HomeRoom, home_room
from stack import Stack
from voice_audio import in_room_noise, loud_seconds, silence, spoken, transcribe, wav_pcm

from sudo_voice_bridge.speech import espeak_wav

pytestmark = pytest.mark.docker

QUESTION = "what is the weather tomorrow"


def asked(question: str) -> bytes:
    """The wake word, a pause (for the earcon), the question, as the family says it near the
    device, in a quiet room's noise."""
    pcm = silence(0.5) + spoken("okay nabu", voice="en-us") + silence(1.0) + spoken(question) + silence(1.5)
    return in_room_noise(pcm)


@pytest.fixture
async def room(api: Stack, http, tmp_path: Path) -> AsyncIterator[HomeRoom]:
    family = await sign_up(http, api.api_url, "Roomers")
    device_id, token = await pair(http, api, family, "Kitchen")
    async with home_room(api, tmp_path, str(family.id), device_id, token) as home:
        await home.until(home.ready, 120, "the device and the agent to hear each other")
        yield home


async def test_a_question_asked_at_the_device_is_answered_through_the_room(api: Stack, room):
    home = room
    since = time.time()
    start = len(home.edge.speaker_pcm())
    await home.say(asked(QUESTION))
    _, offset = await home.first_audio_after(start, 60)
    answer = await home.quiet_after(offset, 1.5, 60)

    # The agent was asked what the bridge heard, and the stand-in answered it.
    [request] = [r for r in api.llm_requests() if r["at"] >= since]
    transcript = request["last_user"]
    assert len(set(transcript.split()) & set(QUESTION.split())) >= 3, transcript
    reply = f"stub says: {transcript}"
    # Its answer came out of the device's speaker, heard back by speech-to-text (pocketsphinx's
    # general model mishears espeak-ng's "stub says" now and then, the rest comes through), as
    # long as espeak-ng takes to say it: the answer, not an echo of the question.
    heard = await asyncio.to_thread(transcribe, answer)
    assert len(set(heard.split()) & set(reply.replace(":", "").split())) >= 4, (heard, reply)
    expected = loud_seconds(*wav_pcm(await espeak_wav(reply, "en-us")))
    played = loud_seconds(answer)
    assert abs(played - expected) < 0.25 * expected, (played, expected)
