"""The thin interface between the satellite and LiveKit, and its implementation on `livekit.rtc`.

The satellite knows a room only through `Room`; what it relies on is the contract below, which
tests/edge/test_edge_room_contract.py checks against every implementation:

- `connect(url, token)` joins, or raises `RoomError` with the reason within the implementation's
  timeout: never a hang. A room object is used for one connection; after a failure, only `close()`.
- `send_audio(pcm)` sends one frame of mono S16_LE at the agreed rate from this device's
  microphone; it raises `RoomError` when not connected (never joined, lost, or closed).
- `agent_audio()` yields the agent's audio as mono S16_LE at the same rate, in order, and ends
  when the room is lost or closed. Only the agent is heard: another device of the family in the
  same room is not played.
- `agent_states()` yields the agent's `lk.agent.state` ("listening", "thinking", "speaking"...)
  each time it changes, its value at join first, and `AGENT_GONE` when the agent leaves the
  room; it ends when the room is lost or closed.
- `disconnected` is set when the room is lost for good (after the SDK's own reconnection
  attempts) or closed; `reason` then says why.
- `close()` leaves the room; it is idempotent and ends both iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

from livekit import rtc

from .settings import AudioSettings

log = logging.getLogger("sudo-edge.room")

AGENT_STATE_ATTRIBUTE = "lk.agent.state"
"""The participant attribute livekit-agents sets to the agent's state."""
AGENT_GONE = "gone"
"""What `agent_states()` yields when the agent left the room."""


class RoomError(Exception):
    """The room could not be joined, or is no longer joined; the message says why."""


class Room(Protocol):
    @property
    def disconnected(self) -> asyncio.Event: ...

    @property
    def reason(self) -> str: ...

    async def connect(self, url: str, token: str) -> None: ...

    async def send_audio(self, pcm: bytes) -> None: ...

    def agent_audio(self) -> AsyncIterator[bytes]: ...

    def agent_states(self) -> AsyncIterator[str]: ...

    async def close(self) -> None: ...


RoomFactory = Callable[[], Room]
"""Makes a fresh room for each connection attempt."""


T = TypeVar("T")


class _Channel(Generic[T]):
    """A single-consumer queue that ends (StopAsyncIteration) once closed."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[T | None] = asyncio.Queue()
        self._closed = False

    def put(self, item: T) -> None:
        if not self._closed:
            self._queue.put_nowait(item)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self._queue.get()) is not None:
            yield item
        self._queue.put_nowait(None)  # stays ended for the next reader too


class LiveKitRoom:
    """`Room` on the LiveKit rtc SDK: publishes the microphone, plays the agent participant."""

    def __init__(self, audio: AudioSettings, *, connect_timeout_sec: float) -> None:
        self.audio = audio
        self.timeout = connect_timeout_sec
        self._room: rtc.Room | None = None
        self._mic: MicTrack | None = None
        self._disconnected = asyncio.Event()
        self._reason = ""
        self._audio: _Channel[bytes] = _Channel()
        self._states: _Channel[str] = _Channel()
        self._last_state: str | None = None
        self._forwarders: dict[str, asyncio.Task[None]] = {}

    @property
    def disconnected(self) -> asyncio.Event:
        return self._disconnected

    @property
    def reason(self) -> str:
        return self._reason

    async def connect(self, url: str, token: str) -> None:
        if self._room is not None or self._disconnected.is_set():
            raise RoomError("this room object was already used: make a new one")
        room = self._room = rtc.Room()
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unsubscribed", self._on_track_unsubscribed)
        room.on("participant_connected", self._check_state)
        room.on("participant_disconnected", self._on_participant_left)
        room.on("participant_attributes_changed", lambda _changed, p: self._check_state(p))
        room.on(
            "reconnecting", lambda: log.warning("LiveKit connection interrupted, the SDK is reconnecting")
        )
        room.on("reconnected", lambda: log.info("LiveKit connection restored"))
        room.on("disconnected", self._on_disconnected)
        # The SDK retries a failing signal connection 3 times with `connect_timeout` each, then
        # gives up by itself; the outer deadline bounds it all. (Should the SDK still get through
        # after the deadline, that orphan is replaced by the next join: same identity.)
        options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=max(1.0, self.timeout / 4))
        try:
            await asyncio.wait_for(room.connect(url, token, options), self.timeout)
        except TimeoutError:
            self._lost(f"no answer from LiveKit at {url} within {self.timeout:g} s")
            raise RoomError(self._reason) from None
        except rtc.ConnectError as exc:
            self._lost(f"cannot join the LiveKit room at {url}: {exc.message}")
            raise RoomError(self._reason) from exc
        except Exception as exc:  # the FFI can fail in other ways (a malformed URL, say)
            self._lost(f"cannot join the LiveKit room at {url}: {exc!r}")
            raise RoomError(self._reason) from exc
        try:
            self._mic = MicTrack(self.audio)
            await room.local_participant.publish_track(
                self._mic.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
        except Exception as exc:
            await self.close()
            raise RoomError(f"cannot publish the microphone in the LiveKit room: {exc}") from exc
        for participant in room.remote_participants.values():
            self._check_state(participant)

    async def send_audio(self, pcm: bytes) -> None:
        if self._mic is None or self._disconnected.is_set():
            raise RoomError(self._reason or "not connected to a room")
        await self._mic.push(pcm)

    def agent_audio(self) -> AsyncIterator[bytes]:
        return aiter(self._audio)

    def agent_states(self) -> AsyncIterator[str]:
        return aiter(self._states)

    async def close(self) -> None:
        room, self._room = self._room, None
        self._lost(self._reason or "closed")
        for task in self._forwarders.values():
            task.cancel()
        await asyncio.gather(*self._forwarders.values(), return_exceptions=True)
        self._forwarders.clear()
        if room is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(room.disconnect(), 5)
        if self._mic is not None:
            await self._mic.aclose()
            self._mic = None

    # Events of the SDK, on the event loop

    def _check_state(self, participant: rtc.RemoteParticipant) -> None:
        if not is_agent(participant):
            return
        state = participant.attributes.get(AGENT_STATE_ATTRIBUTE)
        if state and state != self._last_state:
            self._last_state = state
            self._states.put(state)

    def _on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        if is_agent(participant) and self._last_state != AGENT_GONE:
            log.warning("the agent (%s) left the room", participant.identity)
            self._last_state = AGENT_GONE
            self._states.put(AGENT_GONE)

    def _on_track_subscribed(
        self, track: rtc.Track, _publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if not is_agent(participant) or track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        log.info("playing the agent's audio (%s, track %s)", participant.identity, track.sid)
        stream = open_agent_stream(track, self.audio)
        self._forwarders[track.sid] = asyncio.create_task(
            self._forward(stream), name=f"agent-audio-{track.sid}"
        )

    def _on_track_unsubscribed(
        self, track: rtc.Track, _publication: rtc.RemoteTrackPublication, _participant: rtc.RemoteParticipant
    ) -> None:
        task = self._forwarders.pop(track.sid, None)
        if task is not None:
            task.cancel()

    async def _forward(self, stream: rtc.AudioStream) -> None:
        try:
            async for pcm in stream_pcm(stream):
                self._audio.put(pcm)
        finally:
            await stream.aclose()

    def _on_disconnected(self, reason: int) -> None:
        try:
            name = rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            name = str(reason)
        self._lost(f"LiveKit disconnected ({name})")

    def _lost(self, reason: str) -> None:
        if not self._disconnected.is_set():
            self._reason = reason
            self._disconnected.set()
            self._audio.close()
            self._states.close()


def is_agent(participant: rtc.Participant) -> bool:
    """Whether a participant is an agent (the voice bridge), not another device or a person."""
    return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


class MicTrack:
    """The microphone as a LiveKit audio track: an AudioSource fed one frame at a time."""

    def __init__(self, audio: AudioSettings) -> None:
        self.audio = audio
        self.source = rtc.AudioSource(audio.sample_rate, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)

    async def push(self, pcm: bytes) -> None:
        await self.source.capture_frame(rtc.AudioFrame(pcm, self.audio.sample_rate, 1, len(pcm) // 2))

    async def aclose(self) -> None:
        await self.source.aclose()


def open_agent_stream(track: rtc.Track, audio: AudioSettings) -> rtc.AudioStream:
    """A LiveKit AudioStream on a track, delivering mono frames at our rate and period."""
    return rtc.AudioStream(
        track, sample_rate=audio.sample_rate, num_channels=1, frame_size_ms=audio.period_ms
    )


async def stream_pcm(stream: rtc.AudioStream) -> AsyncIterator[bytes]:
    """The PCM bytes of an AudioStream's frames."""
    async for event in stream:
        yield bytes(event.frame.data)
