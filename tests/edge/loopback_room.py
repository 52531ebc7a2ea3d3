"""An in-memory `Room` and the far end it talks to: a LiveKit server with the voice agent in it.

No LiveKit server can run on these machines, so the satellite tests join this one. It keeps the
contract of sudo_edge.room (tests/edge/test_edge_room_contract.py runs the same suite on it and
on the livekit.rtc implementation): the test, as the agent, hears what the device sends, speaks
into the room, changes its `lk.agent.state`, and can take the server down or make it hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sudo_edge.room import RoomError


@dataclass
class Join:
    url: str
    token: str


@dataclass
class LoopbackServer:
    up: bool = True
    """False: connections are refused."""
    hang: bool = False
    """True: connections are accepted and never answered (the room must time out)."""
    connect_timeout_sec: float = 2.0
    joins: list[Join] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    """Microphone frames the agent got, in order."""
    agent_state: str | None = None
    rooms: list[LoopbackRoom] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()

    def room(self) -> LoopbackRoom:
        """The room factory the satellite is given."""
        return LoopbackRoom(self)

    @property
    def connected(self) -> list[LoopbackRoom]:
        return [r for r in self.rooms if r.joined and not r.disconnected.is_set()]

    # The agent's side

    def say(self, pcm: bytes, chunk: int = 320) -> None:
        """Speak into the room, in chunks like the SDK's 10 ms frames."""
        for room in self.connected:
            for i in range(0, len(pcm), chunk):
                room._audio.put_nowait(pcm[i : i + chunk])

    def set_state(self, state: str) -> None:
        self.agent_state = state
        for room in self.connected:
            room._push_state(state)

    def drop(self, reason: str = "the server closed the connection") -> None:
        """Every connected room is lost, as after the SDK's own reconnection gave up."""
        for room in self.connected:
            room._lose(reason)

    async def wait_for(self, predicate: Callable[[], object], what: str, within: float = 10.0) -> None:
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class LoopbackRoom:
    def __init__(self, server: LoopbackServer) -> None:
        self.server = server
        self.joined = False
        self._used = False
        self._disconnected = asyncio.Event()
        self._reason = ""
        self._audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._states: asyncio.Queue[str | None] = asyncio.Queue()
        self._last_state: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        server.rooms.append(self)

    @property
    def disconnected(self) -> asyncio.Event:
        return self._disconnected

    @property
    def reason(self) -> str:
        return self._reason

    async def connect(self, url: str, token: str) -> None:
        if self._used or self._disconnected.is_set():
            raise RoomError("this room object was already used: make a new one")
        self._used = True
        server = self.server
        if server.hang:
            await asyncio.sleep(server.connect_timeout_sec)
            self._lose(f"no answer from LiveKit at {url} within {server.connect_timeout_sec:g} s")
            raise RoomError(self._reason)
        if not server.up:
            self._lose(f"cannot join the LiveKit room at {url}: connection refused")
            raise RoomError(self._reason)
        server.joins.append(Join(url, token))
        self.joined = True
        if server.agent_state:
            self._push_state(server.agent_state)
        await server._notify()

    async def send_audio(self, pcm: bytes) -> None:
        if not self.joined or self._disconnected.is_set():
            raise RoomError(self._reason or "not connected to a room")
        self.server.received.append(pcm)
        await self.server._notify()

    async def agent_audio(self) -> AsyncIterator[bytes]:
        while (pcm := await self._audio.get()) is not None:
            yield pcm
        self._audio.put_nowait(None)

    async def agent_states(self) -> AsyncIterator[str]:
        while (state := await self._states.get()) is not None:
            yield state
        self._states.put_nowait(None)

    async def close(self) -> None:
        self._lose(self._reason or "closed")
        await self.server._notify()

    def _push_state(self, state: str) -> None:
        if state != self._last_state:
            self._last_state = state
            self._states.put_nowait(state)

    def _lose(self, reason: str) -> None:
        if not self._disconnected.is_set():
            self._reason = reason
            self._disconnected.set()
            self._audio.put_nowait(None)
            self._states.put_nowait(None)
            task = asyncio.get_running_loop().create_task(self.server._notify())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
