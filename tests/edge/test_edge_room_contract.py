"""What the satellite relies on from a `Room`, checked on every implementation.

The suite runs on the in-memory loopback (what the satellite tests use) and on the
livekit.rtc implementation. Clauses that need a far end to answer byte for byte are skipped for
the latter: through a real room audio is Opus, not the same bytes. The real implementation meets
a real far end in tests/integration/test_room.py (the test LiveKit server, the voice bridge):
microphone to agent, agent to speaker, the agent's states, a lost connection. What runs here
without a server (refused and unanswered connections, use before connecting, closing) runs for
real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from loopback_room import LoopbackServer
from ports import free_port

from sudo_edge.room import LiveKitRoom, Room, RoomError
from sudo_edge.settings import AudioSettings

TIMEOUT = 2.0
FRAME = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms at 16 kHz, recognizable


@dataclass
class Impl:
    name: str
    make: Callable[[], Room]
    refused: Callable[[], contextlib.AbstractAsyncContextManager[str]]
    """Gives a URL where connections are refused."""
    unanswered: Callable[[], contextlib.AbstractAsyncContextManager[str]]
    """Gives a URL that accepts connections and never answers."""
    server: LoopbackServer | None
    """The far end, when one can run here."""


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

    return Impl("loopback", server.room, refused, unanswered, server)


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

    return Impl(
        "livekit",
        lambda: LiveKitRoom(AudioSettings(), connect_timeout_sec=TIMEOUT),
        refused,
        unanswered,
        None,
    )


@pytest.fixture(params=["loopback", "livekit"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return loopback_impl() if request.param == "loopback" else livekit_impl()


def far_end(impl: Impl) -> LoopbackServer:
    if impl.server is None:
        pytest.skip(f"{impl.name}: byte-exact clauses; the real room is tests/integration/test_room.py")
    return impl.server


async def collect(iterator: AsyncIterator, count: int | None = None) -> list:
    """Items until the iterator ends (or `count` of them), within the test's patience."""
    items = []
    async with asyncio.timeout(5):
        async for item in iterator:
            items.append(item)
            if count is not None and len(items) == count:
                break
    return items


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
    server = far_end(impl)
    room = impl.make()
    await room.connect("wss://livekit.example.test", "jwt")
    frames = [bytes([i]) * 640 for i in range(10)]
    for frame in frames:
        await room.send_audio(frame)
    assert server.received == frames
    await room.close()


async def test_the_agents_audio_arrives_in_order(impl: Impl):
    server = far_end(impl)
    room = impl.make()
    await room.connect("wss://livekit.example.test", "jwt")
    speech = bytes(range(256)) * 10
    server.say(speech)
    assert b"".join(await collect(room.agent_audio(), count=len(speech) // 320)) == speech
    await room.close()


async def test_agent_state_comes_at_join_then_at_each_change(impl: Impl):
    server = far_end(impl)
    server.set_state("initializing")
    room = impl.make()
    await room.connect("wss://livekit.example.test", "jwt")
    for state in ("listening", "listening", "thinking", "speaking", "listening"):
        server.set_state(state)
    states = await collect(room.agent_states(), count=5)
    assert states == ["initializing", "listening", "thinking", "speaking", "listening"]
    await room.close()


async def test_a_lost_connection_sets_disconnected_and_ends_everything(impl: Impl):
    server = far_end(impl)
    room = impl.make()
    await room.connect("wss://livekit.example.test", "jwt")
    audio, states = room.agent_audio(), room.agent_states()
    readers = asyncio.gather(collect(audio), collect(states))
    server.drop("signal connection lost")
    async with asyncio.timeout(5):
        await room.disconnected.wait()
    assert "signal connection lost" in room.reason
    assert await readers == [[], []]
    with pytest.raises(RoomError):
        await room.send_audio(FRAME)
    await room.close()
