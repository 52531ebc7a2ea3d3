"""What the satellite relies on from a `Room`, checked on every implementation.

The suite runs on the in-memory loopback (what the satellite tests use) and on the livekit.rtc
implementation. For the clauses that need a far end, the real implementation joins the test
LiveKit server (tests/livekit_server.py) with an agent in the room, itself joined through the
real SDK: audio crosses WebRTC both ways, so these clauses judge it by its tones, in order, not
by its bytes (through a room it is Opus). The bridge behind a real agent meets the device in
tests/integration/test_room.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pytest
from livekit import rtc
from livekit.api import AccessToken, VideoGrants
from livekit.protocol import models
from livekit_server import LiveKitServer
from loopback_room import LoopbackServer
from ports import free_port

from sudo_edge.room import AGENT_STATE_ATTRIBUTE, LiveKitRoom, Room, RoomError
from sudo_edge.settings import AudioSettings
from sudo_edge.vad import level_dbfs

TIMEOUT = 2.0
FRAME = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms at 16 kHz, recognizable
RATE = AudioSettings().sample_rate
CHUNK = RATE // 50
"""Samples in 20 ms: the frames the device sends, the stretches `pitches_in` judges."""
PITCHES = (500, 1000)
"""Two tones, one after the other, whose order the far end must keep (Hz; 50 Hz bins apart)."""
LOUD_DBFS = -30.0
"""A stretch above this is a tone (they are at -15 dBFS), below it the silence around them."""


def tones() -> bytes:
    """PITCHES, 0.3 s each."""
    t = np.arange(int(RATE * 0.3)) / RATE
    return b"".join((np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes() for hz in PITCHES)


def frames(pcm: bytes) -> list[bytes]:
    """`pcm` in 20 ms frames, as the device sends its microphone."""
    return [pcm[i : i + CHUNK * 2] for i in range(0, len(pcm), CHUNK * 2)]


def pitches_in(pcm: bytes) -> list[int]:
    """The tones heard in `pcm`, in order: the pitch of each loud 20 ms stretch, nearest of
    PITCHES, a run of one pitch counted once."""
    heard: list[int] = []
    for stretch in frames(pcm):
        if len(stretch) < CHUNK * 2 or level_dbfs(stretch) < LOUD_DBFS:
            continue  # the part of a stretch at the end, or quiet
        samples = np.frombuffer(stretch, dtype="<i2").astype(np.float64)
        peak = float(np.abs(np.fft.rfft(samples)).argmax()) * RATE / CHUNK
        pitch = min(PITCHES, key=lambda hz: abs(hz - peak))
        if not heard or heard[-1] != pitch:
            heard.append(pitch)
    return heard


class FarEnd(Protocol):
    """The agent's side of the room the device joins."""

    url: str
    token: str
    """The device's token."""

    async def meet(self, room: Room) -> None:
        """Return once audio flows both ways between the connected `room` and the agent."""

    def heard(self) -> bytes:
        """The device's microphone as the agent heard it so far."""

    async def say(self, pcm: bytes) -> None: ...

    async def set_state(self, state: str) -> None: ...

    async def drop(self) -> str:
        """Lose the device's connection for good; what the room's `reason` then says."""


@dataclass
class Impl:
    name: str
    make: Callable[[], Room]
    refused: Callable[[], contextlib.AbstractAsyncContextManager[str]]
    """Gives a URL where connections are refused."""
    unanswered: Callable[[], contextlib.AbstractAsyncContextManager[str]]
    """Gives a URL that accepts connections and never answers."""
    far_end: Callable[[], contextlib.AbstractAsyncContextManager[FarEnd]]


class LoopbackFarEnd:
    url, token = "wss://livekit.example.test", "jwt"

    def __init__(self, server: LoopbackServer) -> None:
        self.server = server

    async def meet(self, room: Room) -> None:
        pass  # in memory, audio flows from the start

    def heard(self) -> bytes:
        return b"".join(self.server.received)

    async def say(self, pcm: bytes) -> None:
        self.server.say(pcm)

    async def set_state(self, state: str) -> None:
        self.server.set_state(state)

    async def drop(self) -> str:
        self.server.drop("signal connection lost")
        return "signal connection lost"


def loopback_impl() -> Impl:
    server = LoopbackServer(connect_timeout_sec=TIMEOUT)

    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[str]:
        server.up = False
        yield "wss://livekit.example.test"
        server.up = True

    @contextlib.asynccontextmanager
    async def unanswered() -> AsyncIterator[str]:
        server.hang = True
        yield "wss://livekit.example.test"
        server.hang = False

    @contextlib.asynccontextmanager
    async def far_end() -> AsyncIterator[FarEnd]:
        yield LoopbackFarEnd(server)

    return Impl("loopback", server.room, refused, unanswered, far_end)


class LiveKitFarEnd:
    """The test LiveKit server, and an agent in its room joined through the SDK, which hears
    the device's track and speaks on its own."""

    ROOM = "contract"

    def __init__(self, server: LiveKitServer, url: str) -> None:
        self.server, self.url = server, url
        self.token = self._token("device")
        self.agent = rtc.Room()
        self.source = rtc.AudioSource(RATE, 1)
        self._heard = bytearray()
        self._listeners: set[asyncio.Task[None]] = set()

    def _token(self, identity: str, **agent: str) -> str:
        grants = VideoGrants(room_join=True, room=self.ROOM, can_update_own_metadata=True)
        token = AccessToken(self.server.api_key, self.server.api_secret).with_identity(identity)
        if agent:
            token = token.with_kind("agent").with_attributes(agent)
        return token.with_grants(grants).to_jwt()

    async def join(self) -> None:
        self.agent.on("track_subscribed", self._on_track)
        token = self._token("agent", **{AGENT_STATE_ATTRIBUTE: "initializing"})
        await self.agent.connect(self.url, token)
        track = rtc.LocalAudioTrack.create_audio_track("agent", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.agent.local_participant.publish_track(track, options)

    async def leave(self) -> None:
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        await self.agent.disconnect()
        await self.source.aclose()

    def _on_track(self, track: rtc.Track, *_: object) -> None:
        task = asyncio.create_task(self._listen(rtc.AudioStream(track, sample_rate=RATE, num_channels=1)))
        self._listeners.add(task)

    async def _listen(self, stream: rtc.AudioStream) -> None:
        async for event in stream:
            self._heard.extend(bytes(event.frame.data))

    def _frames_sent_to_device(self) -> int:
        room = self.server.rooms[self.ROOM]
        device, agent = room.by_identity("device"), room.by_identity("agent")
        if device is None or agent is None:
            return 0
        senders = [device.senders.get(sid) for sid in agent.published]
        return min((len(sender.track.sent) for sender in senders if sender), default=0)

    async def meet(self, room: Room) -> None:
        silence = bytes(CHUNK * 2)
        async with asyncio.timeout(10):
            while len(self._heard) < 10 * len(silence) or self._frames_sent_to_device() < 10:
                await room.send_audio(silence)
                await self.say(silence)
                await asyncio.sleep(CHUNK / RATE)

    def heard(self) -> bytes:
        return bytes(self._heard)

    async def say(self, pcm: bytes) -> None:
        for frame in frames(pcm):
            await self.source.capture_frame(rtc.AudioFrame(frame, RATE, 1, len(frame) // 2))

    async def set_state(self, state: str) -> None:
        await self.agent.local_participant.set_attributes({AGENT_STATE_ATTRIBUTE: state})

    async def drop(self) -> str:
        room = self.server.rooms[self.ROOM]
        device = room.by_identity("device")
        assert device is not None
        await room.remove(device, models.DisconnectReason.PARTICIPANT_REMOVED)
        return "PARTICIPANT_REMOVED"


def livekit_impl() -> Impl:
    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[str]:
        yield f"ws://127.0.0.1:{free_port()}"

    @contextlib.asynccontextmanager
    async def unanswered() -> AsyncIterator[str]:
        held: list[asyncio.StreamWriter] = []

        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # keep the connection open, say nothing

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    @contextlib.asynccontextmanager
    async def far_end() -> AsyncIterator[FarEnd]:
        server = LiveKitServer("APIcontract", secrets.token_hex(32))
        far = LiveKitFarEnd(server, await server.start())
        try:
            await far.join()
            yield far
        finally:
            await far.leave()
            await server.stop()

    return Impl(
        "livekit",
        lambda: LiveKitRoom(AudioSettings(), connect_timeout_sec=TIMEOUT),
        refused,
        unanswered,
        far_end,
    )


@pytest.fixture(params=["loopback", "livekit"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return loopback_impl() if request.param == "loopback" else livekit_impl()


async def collect(iterator: AsyncIterator, count: int | None = None) -> list:
    """Items until the iterator ends (or `count` of them), within the test's patience."""
    items = []
    async with asyncio.timeout(5):
        async for item in iterator:
            items.append(item)
            if count is not None and len(items) == count:
                break
    return items


async def eventually(heard: Callable[[], bytes], within: float = 10.0) -> list[int]:
    """The tones in `heard()` once both PITCHES are in it, or what is there after `within` s."""
    for _ in range(round(within / 0.05)):
        if len(pitches_in(heard())) >= len(PITCHES):
            break
        await asyncio.sleep(0.05)
    return pitches_in(heard())


# Clauses that run on every implementation


async def test_refused_connection_fails_fast_with_a_clear_error(impl: Impl):
    room = impl.make()
    async with impl.refused() as url:
        started = time.monotonic()
        with pytest.raises(RoomError) as failed:
            await room.connect(url, "token")
    assert time.monotonic() - started < TIMEOUT + 1
    assert url in str(failed.value)
    assert room.disconnected.is_set() and room.reason
    await room.close()


async def test_unanswered_connection_times_out_instead_of_hanging(impl: Impl):
    room = impl.make()
    async with impl.unanswered() as url:
        started = time.monotonic()
        with pytest.raises(RoomError) as failed:
            await room.connect(url, "token")
        elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 1.5, f"connect took {elapsed:.1f} s with a {TIMEOUT} s timeout"
    assert url in str(failed.value)
    await room.close()


async def test_a_room_object_serves_one_connection(impl: Impl):
    room = impl.make()
    async with impl.refused() as url:
        with pytest.raises(RoomError):
            await room.connect(url, "token")
    with pytest.raises(RoomError, match="already used"):
        await room.connect(url, "token")
    await room.close()


async def test_sending_before_connecting_is_an_error(impl: Impl):
    room = impl.make()
    with pytest.raises(RoomError):
        await room.send_audio(FRAME)
    await room.close()


async def test_close_is_idempotent_and_ends_both_iterators(impl: Impl):
    room = impl.make()
    audio, states = room.agent_audio(), room.agent_states()
    readers = asyncio.gather(collect(audio), collect(states))
    await room.close()
    await room.close()
    assert room.disconnected.is_set()
    assert await readers == [[], []]
    with pytest.raises(RoomError):
        await room.send_audio(FRAME)


# Clauses that need the far end


async def test_microphone_frames_reach_the_agent_in_order(impl: Impl):
    async with impl.far_end() as far:
        room = impl.make()
        await room.connect(far.url, far.token)
        await far.meet(room)
        for frame in frames(tones()):
            await room.send_audio(frame)
        assert await eventually(far.heard) == list(PITCHES)
        await room.close()


async def test_the_agents_audio_arrives_in_order(impl: Impl):
    async with impl.far_end() as far:
        room = impl.make()
        await room.connect(far.url, far.token)
        await far.meet(room)
        heard = bytearray()

        async def listen() -> None:
            async for pcm in room.agent_audio():
                heard.extend(pcm)

        listening = asyncio.create_task(listen())
        await far.say(tones())
        assert await eventually(lambda: bytes(heard)) == list(PITCHES)
        await room.close()
        await listening


async def test_agent_state_comes_at_join_then_at_each_change(impl: Impl):
    async with impl.far_end() as far:
        await far.set_state("initializing")
        room = impl.make()
        await room.connect(far.url, far.token)
        for state in ("listening", "listening", "thinking", "speaking", "listening"):
            await far.set_state(state)
        states = await collect(room.agent_states(), count=5)
        assert states == ["initializing", "listening", "thinking", "speaking", "listening"]
        await room.close()


async def test_a_lost_connection_sets_disconnected_and_ends_everything(impl: Impl):
    async with impl.far_end() as far:
        room = impl.make()
        await room.connect(far.url, far.token)
        await far.meet(room)
        audio, states = room.agent_audio(), room.agent_states()
        readers = asyncio.gather(collect(audio), collect(states))
        reason = await far.drop()
        async with asyncio.timeout(5):
            await room.disconnected.wait()
        assert reason in room.reason
        await readers  # both end (with what they had before, if anything)
        with pytest.raises(RoomError):
            await room.send_audio(FRAME)
        await room.close()
