"""The home device and the voice bridge meet in one LiveKit room (tests/home_room.py).

A spoken question goes into sudo-edge's ALSA file microphone in its own network namespace,
through the wake word and the room's WebRTC to the bridge, which asks the family's real Hermes
container (the LLM stand-in answering), and its spoken answer comes back through the room to
the edge's ALSA file speaker, where speech-to-text hears it again; and the family reads the
turn in its Home thread in a browser.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browsers import chromium, signed_in
from control_plane import Family, pair, run_cron_now, sign_up
from home_room import RATE, HomeRoom, asked, home_room
from playwright.async_api import expect
from stack import Stack
from voice_audio import in_room_noise, loud_seconds, silence, spoken, transcribe, wav_pcm

from sudo_core.families import VOICE_AGENT
from sudo_edge.satellite import AGENT_AWAY
from sudo_edge.settings import PairingSettings
from sudo_voice_bridge.speech import espeak_wav

# Real-time audio: on a busy CPU a turn's timing is lost, so `make test` runs these alone.
pytestmark = [pytest.mark.docker, pytest.mark.alone]

QUESTION = "what is the weather tomorrow"


@pytest.fixture
async def owner(api: Stack, http) -> Family:
    return await sign_up(http, api.api_url, "Roomers")


@pytest.fixture
async def room(api: Stack, http, provisioner, owner: Family, tmp_path: Path) -> AsyncIterator[HomeRoom]:
    # The family's agent is awake before anyone speaks: a cold one has the bridge say "one
    # moment" before the answer, which these tests of the room would take for the answer.
    await provisioner.ensure(uuid.UUID(owner.id))
    device_id, token = await pair(http, api, owner, "Kitchen")
    async with home_room(api, tmp_path, str(owner.id), device_id, token) as home:
        await home.until(home.ready, 120, "the device and the agent to hear each other")
        yield home


async def answered(api: Stack, home: HomeRoom, since: float, question: str, answer: bytes) -> str:
    """What the bridge heard of `question`, once the stand-in's reply to it is what `answer`
    (the speaker's audio) holds: as long as espeak-ng takes to say that reply, not an echo."""
    words = set(question.split())
    # (A new Hermes session may ask the model something else first, a title for instance.)
    asked = [r["last_user"] for r in api.llm_requests() if r["at"] >= since]
    transcript = max(asked, key=lambda text: len(set(text.split()) & words))
    assert len(set(transcript.split()) & words) >= 2, (asked, question)
    expected = loud_seconds(*wav_pcm(await espeak_wav(f"stub says: {transcript}", "en-us")))
    if abs(loud_seconds(answer) - expected) >= 0.25 * expected:
        # Sent long, or played long? The server's view of the agent's audio tells them apart.
        sent = home.agent_sounded(time.monotonic() - (time.time() - since))
        raise AssertionError(
            f"the speaker played {loud_seconds(answer):.2f} s of answer, {expected:.2f} s expected; "
            f"the stand-in was asked {asked}; the server received the agent's loud audio over "
            f"{sent[-1] - sent[0] if sent else 0:.2f} s ({len(sent)} frames)\n{home.logs()}"
        )
    return transcript


async def test_a_question_asked_at_the_device_is_answered_through_the_room(api: Stack, owner: Family, room):
    home = room
    since = time.time()
    answer, latency = await home.ask(QUESTION)
    print(f"end of speech to first audio at the speaker: {latency:.2f} s")
    transcript = await answered(api, home, since, QUESTION, answer)
    # Heard back by speech-to-text (pocketsphinx's general model mishears espeak-ng's "stub
    # says" now and then; the rest comes through).
    heard = await asyncio.to_thread(transcribe, answer)
    reply = f"stub says {transcript}"
    assert len(set(heard.split()) & set(reply.split())) >= 3, (heard, reply)

    # The turn is kept in the family's Home thread, which the members read in /chat.
    async with chromium() as browser:
        _, page = await signed_in(browser, api.api_url, owner.token)
        await page.goto(f"{api.api_url}/chat?thread=home")
        await expect(page.locator("li.message .who")).to_have_text(["Kitchen", "Assistant"], timeout=15_000)
        shown = await page.locator("li.message .text").all_inner_texts()
    assert shown == [transcript, f"stub says: {transcript}"], (shown, transcript)


async def test_the_device_says_when_the_bridge_is_gone_and_talks_again_once_it_is_back(api: Stack, room):
    home = room
    await home.ask(QUESTION)
    home.kill_bridge()  # as the OOM killer or a crash would: no goodbye

    # The device notices its agent left, says so out loud (no agent is there to speak), and
    # keeps joining its room again, each time a new one, so that LiveKit dispatches anew.
    start = len(home.edge.speaker_pcm())
    _, offset = await home.first_audio_after(start, 30)
    notice = await home.quiet_after(offset, 1.0, 30)
    said = await asyncio.to_thread(
        subprocess.run, [*PairingSettings().speak_command, AGENT_AWAY], capture_output=True, check=True
    )
    expected = loud_seconds(*wav_pcm(said.stdout))
    assert abs(loud_seconds(notice) - expected) < 0.15 * expected, (loud_seconds(notice), expected)
    await home.until(lambda: "no agent in the room for" in home.edge.log(), 30, "the device's log line")
    no_worker = ("no worker", home.room_name, VOICE_AGENT)
    # (Within a second try: a room an agent's late join made keeps the server's own timeout.)
    await home.until(lambda: no_worker in home.livekit.events, 60, "a join with no worker to dispatch")

    home.start_bridge()  # systemd's Restart=
    await home.until(home.ready, 90, "the device and a new agent to hear each other")
    since = time.time()
    answer, latency = await home.ask(QUESTION)
    print(f"after the bridge's restart, end of speech to first audio at the speaker: {latency:.2f} s")
    await answered(api, home, since, QUESTION, answer)


async def test_talking_over_the_agent_stops_it(api: Stack, room):
    home = room
    await home.ask(QUESTION)  # a new Hermes session's first turn is slow: then they are even
    _, latency = await home.ask(QUESTION)
    long_question = (
        "please tell me everything about the weather tomorrow and the day after and then all about the week"
    )
    whole = loud_seconds(*wav_pcm(await espeak_wav(f"stub says: {long_question}", "en-us")))
    # One breath: the question, then, once the answer is well under way, more words over it (the
    # device sends them without the wake word: the agent is speaking).
    question, question_end = asked(long_question)
    over_it = spoken("what about the weekend")
    gap = silence(latency + 2.0)
    pcm = in_room_noise(question[: int(question_end * RATE) * 2] + gap + over_it + silence(2.0))
    ended = await home.say(pcm, question_end)
    talked_over = ended + len(gap) / 2 / RATE

    # What was said over it was heard and answered: the agent speaks again after it ended.
    over_it_ended = talked_over + len(over_it) / 2 / RATE
    await home.until(lambda: home.agent_sounded(over_it_ended), 60, "an answer to what was said over it")
    # The first answer stopped soon after the family spoke over it, well short of its end.
    sounded = home.agent_sounded(ended)
    assert sounded[0] < talked_over, "the first answer was being spoken when the family spoke"
    going_on = [t for t in sounded if t >= talked_over]
    stopped = next((a for a, b in itertools.pairwise(going_on) if b - a > 0.7), going_on[-1])
    assert stopped - talked_over < 2.0, f"spoke on {stopped - talked_over:.1f} s after being talked over"
    assert stopped - sounded[0] < whole - 2.0, (stopped - sounded[0], whole)
    print(f"the agent stopped {stopped - talked_over:.2f} s after the family spoke over it")


async def test_the_device_talks_again_after_its_network_was_cut(api: Stack, room):
    home = room
    await home.ask(QUESTION)
    home.ns.cut()  # the Wi-Fi goes, long enough for LiveKit's signalling to time out (15 s)
    await home.until(lambda: "LiveKit connection interrupted" in home.edge.log(), 30, "the device to notice")
    await asyncio.sleep(5)
    joins = home.edge.log().count("connected to room_")
    home.ns.restore()
    # Back in the room: the SDK's session restored, or the room joined again.
    log = home.edge.log
    await home.until(
        lambda: "LiveKit connection restored" in log() or log().count("connected to room_") > joins,
        60,
        "the device to be back in its room",
    )
    await home.until(home.ready, 60, "the device and the agent to hear each other again")
    since = time.time()
    answer, _ = await home.ask(QUESTION)
    await answered(api, home, since, QUESTION, answer)


async def test_a_cron_reminder_set_through_hermes_is_said_at_the_device(api: Stack, owner: Family, room):
    home = room
    start = len(home.edge.speaker_pcm())
    container = api.container(uuid.UUID(owner.id))
    await asyncio.to_thread(
        run_cron_now, container, "Tell the family it is time to leave for school", "sudo_voice"
    )
    _, offset = await home.first_audio_after(start, 120)
    said = await home.quiet_after(offset, 2.0, 120)

    # The family's Home thread keeps what was said, and that it was said.
    for _ in range(100):
        status, body = await owner.call("GET", "/v1/chat/messages?thread=home")
        assert status == 200, body
        if [m["status"] for m in body["messages"]] == ["spoken"]:
            break
        await asyncio.sleep(0.2)
    [reminder] = body["messages"]
    assert reminder["status"] == "spoken" and "leave for school" in reminder["text"], reminder
    # What came out of the speaker is that text, as long as espeak-ng takes to say it.
    expected = loud_seconds(*wav_pcm(await espeak_wav(reminder["text"], "en-us")))
    assert abs(loud_seconds(said) - expected) < 0.2 * expected, (loud_seconds(said), expected)
