"""A photo and a voice note from a real browser (Debian's chromium, driven by Playwright) to the
family's real Hermes: the photo attached through the composer's file input, the voice note
recorded by the page's real MediaRecorder from chromium's fake microphone (a recording of
espeak-ng saying a sentence). The model is shown the photo's bytes and given the words spoken;
both show in the history, live and after a reload, as a thumbnail and a player."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browsers import chromium
from control_plane import phrases_heard, png
from playwright.async_api import Browser, expect
from stack import Stack

PASSWORD = "correct horse battery"
SAID = "turn off the lights in the kitchen"
PHRASES = [SAID, "call grandma tomorrow morning", "what is the weather like today"]
"""What the stand-in's recogniser may hear: it must tell which one was said."""


def spoken_wav(path: Path) -> float:
    """espeak-ng saying SAID, with quiet around it, as a WAV file; its length in seconds."""
    speech = subprocess.run(["espeak-ng", "--stdout", SAID], capture_output=True, check=True).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", "48000", "-b", "16", "-c", "1", str(path), "pad", "0.3", "1"],
        input=speech,
        check=True,
    )
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True).stdout)


@pytest.fixture
async def browser_and_clip(tmp_path: Path) -> AsyncIterator[tuple[Browser, float]]:
    wav = tmp_path / "said.wav"
    seconds = spoken_wav(wav)
    # The microphone is the recording, played once (%noloop), and allowed without asking.
    async with chromium(
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ) as browser:
        yield browser, seconds


@pytest.fixture
async def phrases(api: Stack, http) -> AsyncIterator[None]:
    async with phrases_heard(http, api, PHRASES):
        yield


@pytest.mark.usefixtures("phrases")
async def test_a_photo_and_a_recorded_voice_note_reach_the_agent_and_show(api: Stack, browser_and_clip):
    browser, seconds = browser_and_clip
    base = api.api_url
    page = await browser.new_page()
    await page.goto(f"{base}/signup")
    await page.get_by_label("Family name").fill("The Franklins")
    await page.get_by_label("Your name").fill("Rosalind")
    await page.get_by_label("Email").fill(f"rosalind-{uuid.uuid4().hex[:6]}@example.org")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page).to_have_url(f"{base}/chat")
    await expect(page.locator("body[data-live=yes]")).to_be_attached()

    photo = png((30, 160, 60))
    await page.get_by_placeholder("Message your assistant").fill("what colour is this?")
    await page.locator("input[name=file]").set_input_files(
        files=[{"name": "green.png", "mimeType": "image/png", "buffer": photo}]
    )
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("li.message.user img.media")).to_be_visible(timeout=120_000)
    reply = page.locator("li.message.assistant.final .text")
    await expect(reply).to_contain_text("what colour is this?", timeout=120_000)
    asked = next(r for r in api.llm_requests() if "what colour is this?" in r["last_user"])
    assert [i["sha256"] for i in asked["images"]] == [hashlib.sha256(photo).hexdigest()]

    record = page.get_by_role("button", name="Record a voice note")
    await record.click()
    await expect(page.locator("#elapsed")).to_have_text(re.compile(r"^0:0\d$"))  # a clock runs
    await asyncio.sleep(seconds + 0.5)  # the microphone says its sentence, then falls quiet
    await page.get_by_role("button", name="Stop and send").click()
    await expect(page.locator("li.message.user audio.media")).to_be_attached(timeout=60_000)
    await expect(reply.nth(1)).to_contain_text(SAID, timeout=120_000)  # the agent got the words
    assert SAID in [h["text"] for h in api.llm_requests("/v1/audio/transcriptions")]
    await expect(page.locator("li.message.assistant")).to_have_count(2)  # one answer each, no notice

    await page.reload()
    thumbnail = page.locator("li.message.user img.media")
    await expect(thumbnail).to_have_attribute("src", f"/chat/media/{await message_id(page, 0)}")
    assert await thumbnail.evaluate("img => img.decode().then(() => img.naturalWidth)") == 24
    player = page.locator("li.message.user audio.media")
    assert await player.evaluate("a => a.controls") is True
    duration = await player.evaluate(
        "a => new Promise(ok => { a.onloadedmetadata = () => ok(a.duration); a.load(); })"
    )
    assert duration > 0  # the recording plays back, fetched from the family's volume
    assert "Couldn't deliver" not in await page.locator("#messages").inner_text()


async def message_id(page, n: int) -> str:
    return (await page.locator("li.message.user").nth(n).get_attribute("id")).removeprefix("m-")
