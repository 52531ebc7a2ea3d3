"""The livekit.rtc pieces of the real room that work without a server, run for real.

The microphone track (AudioSource + LocalAudioTrack) is what the room publishes; the agent's
audio is read through `open_agent_stream` + `stream_pcm`, the same functions the room applies
to the agent's subscribed track. Here the stream reads the local track itself, so frames go
through the SDK's whole audio path: our bytes in, the SDK's frames out.
"""

from __future__ import annotations

import asyncio

import numpy as np
from edge_support import RATE, tone_power

from sudo_edge.room import MicTrack, open_agent_stream, stream_pcm
from sudo_edge.settings import AudioSettings


def sine(frequency: float, seconds: float) -> bytes:
    t = np.arange(round(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16).tobytes()


async def test_microphone_frames_flow_through_the_sdk_at_16k_in_our_period():
    audio = AudioSettings()
    mic = MicTrack(audio)
    stream = open_agent_stream(mic.track, audio)
    out: list[bytes] = []
    wanted = 25  # half a second of 20 ms frames

    async def read() -> None:
        async for pcm in stream_pcm(stream):
            out.append(pcm)
            if len(out) == wanted:
                return

    reader = asyncio.create_task(read())
    signal = sine(440, 1.0)
    for i in range(0, len(signal), audio.period_bytes):
        await mic.push(signal[i : i + audio.period_bytes])
    async with asyncio.timeout(10):
        await reader
    await stream.aclose()
    await mic.aclose()

    assert {len(pcm) for pcm in out} == {audio.period_bytes}, "frames of one period, mono S16_LE"
    received = b"".join(out)
    assert tone_power(received[len(received) // 2 :], 440) > 0.9, "the tone survives the SDK's path"
