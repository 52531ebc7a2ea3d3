"""A photo and a voice note through /v1 to the family's real Hermes: the model is shown the photo's
very bytes, the voice note reaches it as the words spoken (the gateway's speech-to-text), each
answered once; the file is on the family's volume, and only its sender fetches it back."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import av
import pytest
from control_plane import Family, add_child, phrases_heard, png, sign_up
from stack import Stack

SAID = "call grandma tomorrow morning"
PHRASES = [SAID, "turn off the lights in the kitchen", "what is the weather like today"]
"""What the stand-in's recogniser may hear: it must tell which one was said."""


def voice_note(text: str) -> bytes:
    """espeak-ng saying `text`, in WebM/Opus as a browser's MediaRecorder records it."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as source, av.open(out, "w", format="webm") as webm:
        stream = webm.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in [*source.decode(audio=0), None]:  # None: what the resampler holds back
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    webm.mux(packet)
        for packet in stream.encode(None):
            webm.mux(packet)
    return out.getvalue()


async def send(family: Family, text: str, data: bytes, filename: str, kind: str) -> dict:
    form = aiohttp.FormData()
    form.add_field("text", text)
    form.add_field("file", data, filename=filename, content_type=kind)
    async with family.http.post(f"{family.base}/v1/chat/messages", data=form, headers=family.headers) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return body["message"]


async def answered(family: Family, message_id: str, within: float = 180) -> list[dict]:
    """The thread once the message is answered: its replies."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, body = await family.call("GET", "/v1/chat/messages?limit=500")
        assert status == 200, body
        mine = next(m for m in body["messages"] if m["id"] == message_id)
        assert mine["status"] != "failed", mine
        if mine["status"] == "answered":
            return [m for m in body["messages"] if m["reply_to"] == message_id]
        await asyncio.sleep(0.25)
    raise TimeoutError(f"message {message_id} was not answered in {within} s")


async def fetch(family: Family, path: str) -> tuple[int, bytes, dict]:
    async with family.http.get(f"{family.base}{path}", headers=family.headers, allow_redirects=False) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.fixture
async def phrases(api: Stack, http) -> AsyncIterator[None]:
    async with phrases_heard(http, api, PHRASES):
        yield


@pytest.mark.usefixtures("phrases")
async def test_a_photo_and_a_voice_note_reach_the_agent_and_only_their_sender(api: Stack, http):
    family = await sign_up(http, api.api_url, "Curie")
    child = await add_child(family, "Irene")

    photo = png()
    sent = await send(family, "what is in this photo?", photo, "red.png", "image/png")
    assert sent["media_type"] == "image/png" and sent["media_bytes"] == len(photo)
    replies = await answered(family, sent["id"])
    # One answer, with no notice of an attachment the chat could not show.
    assert len(replies) == 1 and "Couldn't deliver" not in replies[0]["text"], replies
    asked = next(r for r in api.llm_requests() if "what is in this photo?" in r["last_user"])
    assert asked["images"] == [
        {"type": "image/png", "bytes": len(photo), "sha256": hashlib.sha256(photo).hexdigest()}
    ]

    clip = voice_note(SAID)
    spoken = await send(family, "", clip, "voice-note.webm", "audio/webm;codecs=opus")
    assert spoken["media_type"] == "audio/webm" and spoken["text"] == ""
    replies = await answered(family, spoken["id"])
    heard = [r for r in api.llm_requests("/v1/audio/transcriptions") if r["bytes"] == len(clip)]
    assert [r["text"] for r in heard] == [SAID], heard  # the recogniser heard it, through the gateway
    assert heard[0]["authorization"] == f"Bearer {api.llm_key}"  # the host's key, not the family's
    assert any(SAID in r["last_user"] for r in api.llm_requests())  # the agent was given the words
    # One answer: no echo of the transcript as a reply of its own.
    assert len(replies) == 1 and SAID in replies[0]["text"], replies

    for path in (f"/v1/chat/media/{sent['id']}", f"/chat/media/{sent['id']}"):
        status, body, headers = await fetch(family, path)
        assert status == 200 and body == photo
        assert headers["Content-Type"] == "image/png" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"].startswith("private")
        assert (await fetch(child, path))[0] == 404  # another member of the same family
    status, body, headers = await fetch(family, f"/v1/chat/media/{spoken['id']}")
    assert status == 200 and body == clip and headers["Content-Type"] == "audio/webm"
