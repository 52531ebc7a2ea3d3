"""ALSA capture and playback (pyalsaaudio), each in its own thread, paced in real time.

Blocking ALSA calls never run on the event loop, so a stalled watchdog means the loop itself is
stuck. Both threads hold their stream to real time against the monotonic clock: a sound card
blocks by itself, but ALSA's `file` plugin (the tests, the benchmark) and some virtual devices
return at once, and a microphone read faster than real time would flood the room. When a device
call blocked for a good part of a period, the device is the clock and the pacer follows it, so a
sound card's clock drifting from the Pi's never builds up into a lag.

A device that fails to open, or errors mid-stream, raises `AudioDeviceError` with the device
name and what to check; the satellite logs it and opens the device again `retry_sec` later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import alsaaudio
import numpy as np

from .settings import AudioSettings, CueSettings, Settings
from .vad import SILENCE_DBFS, Frame, SpeechGate, level_dbfs

if TYPE_CHECKING:
    from .wake import Listening

log = logging.getLogger("sudo-edge.audio")

LOUD_DBFS = -50.0
"""Speaker output above this level counts as sound for half duplex (dBFS)."""


class AudioDeviceError(RuntimeError):
    """A sound device could not be opened or failed; the message names it and says what to check."""


def open_pcm(settings: AudioSettings, *, capture: bool) -> alsaaudio.PCM:
    """Open the microphone or the speaker as mono S16_LE at the configured rate and period."""
    device, key, tool = (
        (settings.mic_device, "mic_device", "arecord")
        if capture
        else (settings.speaker_device, "speaker_device", "aplay")
    )
    what = "capture" if capture else "playback"
    try:
        pcm = alsaaudio.PCM(
            alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK,
            alsaaudio.PCM_NORMAL,
            device=device,
            channels=1,
            rate=settings.sample_rate,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=settings.period_frames,
        )
    except alsaaudio.ALSAAudioError as exc:
        raise AudioDeviceError(
            f"cannot open ALSA {what} device {device!r}: {exc} "
            f"(check audio.{key} in the configuration; `{tool} -L` lists the devices)"
        ) from exc
    info = pcm.info()
    if (info.get("rate"), info.get("channels")) != (settings.sample_rate, 1):
        pcm.close()
        raise AudioDeviceError(
            f"ALSA {what} device {device!r} runs at {info.get('rate')} Hz with {info.get('channels')} "
            f"channel(s), not {settings.sample_rate} Hz mono: use its plughw: name so ALSA converts"
        )
    return pcm


class Pacer:
    """Lets stream position `p` (in samples) pass no earlier than t0 + p / rate - lead."""

    def __init__(self, rate: int, *, lead_sec: float = 0.0, slack_sec: float = 0.1) -> None:
        self.rate = rate
        self.lead = lead_sec
        self.slack = slack_sec
        self._t0: float | None = None

    def anchor(self, position: int) -> None:
        """Make `position` due now (the device just showed where real time is)."""
        self._t0 = time.monotonic() - position / self.rate + self.lead

    def reset(self) -> None:
        self._t0 = None

    def time_of(self, position: int) -> float:
        """When `position` is played or captured, on the monotonic clock."""
        return (self._t0 or time.monotonic()) + position / self.rate - self.lead

    def wait(self, position: int) -> None:
        """Block (in an audio thread) until `position` is due; never rush to catch up after a stall."""
        if self._t0 is None:
            self.anchor(position)
        due = self.time_of(position)
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > self.slack:
            self.anchor(position)


_END = object()
"""Queued after the last frame when the microphone stops by itself (its frame limit)."""


@dataclass
class PumpStats:
    read: int = 0
    """Frames captured."""
    sent: int = 0
    """Frames the VAD let through."""


class Microphone:
    """`async with Microphone(settings) as mic: async for frame in mic: ...` (frames of one period).

    With a `gate`, the VAD runs in the capture thread and only the frames it lets through reach
    the event loop: a quiet room costs the loop nothing. `echo(t)` (the speaker's `echo_level`)
    tells the gate what the speaker played around each frame; `half_duplex()` shuts the
    gate while the speaker sounds; `listening` (the wake word) keeps it shut until the word is
    heard. With a `limit`, capture ends after that many frames.
    """

    def __init__(
        self,
        settings: AudioSettings,
        *,
        gate: SpeechGate | None = None,
        half_duplex: Callable[[], bool] | None = None,
        echo: Callable[[float], float | None] | None = None,
        listening: Listening | None = None,
        limit: int | None = None,
        stats: PumpStats | None = None,
        queue_sec: float = 2.0,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.half_duplex = half_duplex
        self.echo = echo
        self.listening = listening
        self.limit = limit
        self.stats = stats or PumpStats()
        self._queue: asyncio.Queue[Frame | BaseException | object] = asyncio.Queue(
            maxsize=max(1, round(queue_sec * 1000 / settings.period_ms))
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        """Frames dropped because the event loop did not take them in time."""

    async def __aenter__(self) -> Microphone:
        self._loop = asyncio.get_running_loop()
        pcm = await asyncio.to_thread(open_pcm, self.settings, capture=True)
        self._thread = threading.Thread(target=self._run, args=(pcm,), name="sudo-edge-mic", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self

    async def __anext__(self) -> Frame:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def _run(self, pcm: alsaaudio.PCM) -> None:
        s = self.settings
        pacer = Pacer(s.sample_rate)
        pending = bytearray()
        index = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                count, data = pcm.read()
                if count < 0:
                    log.warning("microphone %r overran (audio was lost): the Pi fell behind", s.mic_device)
                    pacer.reset()
                    continue
                if time.monotonic() - started > s.period_ms / 2000:  # the device keeps time itself
                    pacer.anchor((index + (len(pending) + len(data)) // s.period_bytes) * s.period_frames)
                pending += data
                while len(pending) >= s.period_bytes and not self._stop.is_set():
                    frame = Frame(index, bytes(pending[: s.period_bytes]))
                    del pending[: s.period_bytes]
                    index += 1
                    pacer.wait(index * s.period_frames)
                    self._deliver(frame)
                    if self.limit is not None and index >= self.limit:
                        self._emit([_END])
                        return
        except alsaaudio.ALSAAudioError as exc:
            self._emit([AudioDeviceError(f"ALSA capture device {s.mic_device!r} failed: {exc}")])
        except Exception as exc:  # a bug must reach the reader, not leave it waiting for ever
            self._emit([exc])
        finally:
            pcm.close()

    def _deliver(self, frame: Frame) -> None:
        self.stats.read += 1
        if self.gate is None:
            self._emit([frame])
            return
        wakes = self.listening.wakes if self.listening is not None else 0
        if (self.half_duplex is not None and self.half_duplex()) or (
            self.listening is not None and not self.listening.admits(frame.pcm, self.gate.open)
        ):
            self.gate.reset()
            if self.listening is not None and self.listening.wakes != wakes:  # the word, just now
                self.gate.hold_open(self.listening.follow_up_sec)
            return
        sent = self.gate.push(frame, self.echo(time.monotonic()) if self.echo is not None else None)
        if sent:
            self.stats.sent += len(sent)
            self._emit(sent)

    def _emit(self, items: list) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._put, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _put(self, items: list) -> None:
        for item in items:
            if self._queue.full():
                self._queue.get_nowait()
                self.dropped += 1
            self._queue.put_nowait(item)


class Speaker:
    """The speaker, open for the daemon's life; a thread writes what `play()` and `overlay()` give.

    `play()` queues audio in order (the agent, spoken announcements). `overlay()` mixes a short
    sound into whatever plays next, or plays it alone, so a cue never delays the agent's stream.
    Audio given while the device is being opened waits for it; audio given while the device is
    down (after a failure, until the retry) is dropped: it would be stale by the time it played.
    """

    def __init__(
        self, settings: AudioSettings, *, echo_tail_ms: int | None = None, max_queue_sec: float = 60.0
    ):
        self.settings = settings
        self._tail = (settings.echo_tail_ms if echo_tail_ms is None else echo_tail_ms) / 1000
        self._max_bytes = round(max_queue_sec * settings.sample_rate) * 2
        self._cond = threading.Condition()
        self._stream = bytearray()
        self._overlay = bytearray()
        self._busy = False
        self._stopping = False
        self._up = False
        self._down = False
        self._thread: threading.Thread | None = None
        self.loud_until = 0.0
        """Until when (monotonic clock) the speaker is making sound, echo tail included."""
        self._heard: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)
        """(when it is heard, level in dBFS) of each period written lately."""
        self.written = 0
        """Bytes written to the device since start."""

    @property
    def up(self) -> bool:
        """Whether the device is open."""
        return self._up

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sudo-edge-speaker", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def is_sounding(self) -> bool:
        return time.monotonic() < self.loud_until

    def echo_level(self, at: float) -> float | None:
        """The loudest the speaker played over the echo tail before `at` (dBFS), the echo the
        microphone may be hearing then; None when it has been quiet for longer."""
        if at >= self.loud_until:
            return None
        since = at - self._tail
        return max(
            (level for heard, level in list(self._heard) if since <= heard <= at), default=SILENCE_DBFS
        )

    def play(self, pcm: bytes) -> None:
        with self._cond:
            if self._down:
                return
            self._stream += pcm
            if len(self._stream) > self._max_bytes:
                del self._stream[: len(self._stream) - self._max_bytes]
            self._cond.notify_all()

    def overlay(self, pcm: bytes) -> None:
        with self._cond:
            if self._down:
                return
            self._overlay[:] = pcm  # a new cue replaces one still playing
            self._cond.notify_all()

    async def drained(self) -> None:
        """Return once everything given so far has been written to the device (or dropped)."""
        await asyncio.to_thread(self._wait_drained)

    def _wait_drained(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or not (self._stream or self._overlay or self._busy))

    def _run(self) -> None:
        s = self.settings
        while not self._stopping:
            try:
                pcm = open_pcm(s, capture=False)
            except AudioDeviceError as exc:
                log.error("%s; trying again in %g s", exc, s.retry_sec)
                self._down_for(s.retry_sec)
                continue
            log.info("speaker %r is open", s.speaker_device)
            with self._cond:
                self._up = True
            try:
                self._write_until_stopped(pcm)
            except alsaaudio.ALSAAudioError as exc:
                log.error(
                    "ALSA playback device %r failed: %s; opening it again in %g s",
                    s.speaker_device,
                    exc,
                    s.retry_sec,
                )
                with contextlib.suppress(alsaaudio.ALSAAudioError):
                    pcm.close()
                self._down_for(s.retry_sec)
                continue
            pcm.close()

    def _down_for(self, seconds: float) -> None:
        """Drop what waits to be played, refuse more, and wait (unless stopped)."""
        with self._cond:
            self._up = False
            self._down = True
            self._busy = False
            self._stream.clear()
            self._overlay.clear()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)
            self._down = False

    def _write_until_stopped(self, pcm: alsaaudio.PCM) -> None:
        s = self.settings
        pacer = Pacer(s.sample_rate, lead_sec=s.playback_lead_ms / 1000)
        position = 0
        dirty = False
        while True:
            with self._cond:
                self._busy = False
                if not (self._stream or self._overlay):
                    self._cond.notify_all()  # drained() waiters
                    self._cond.wait_for(lambda: self._stopping or self._stream or self._overlay, timeout=0.5)
                if self._stopping:
                    return
                if not (self._stream or self._overlay):
                    idle = True
                else:
                    idle = False
                    chunk = bytes(self._stream[: s.period_bytes])
                    del self._stream[: len(chunk)]
                    cue = bytes(self._overlay[: len(chunk) or s.period_bytes])
                    del self._overlay[: len(cue)]
                    self._busy = True
            if idle:
                if dirty:  # let the last sound play out, so nothing waits in the buffer
                    pcm.drain()
                    dirty = False
                pacer.reset()
                position = 0
                continue
            out = _mix(chunk, cue)
            pacer.wait(position)
            started = time.monotonic()
            _write_all(pcm, out)
            if time.monotonic() - started > s.period_ms / 2000:
                pacer.anchor(position)
            position += len(out) // 2
            dirty = True
            self.written += len(out)
            level = level_dbfs(out)
            self._heard.append((pacer.time_of(position), level))
            if level > LOUD_DBFS:
                self.loud_until = pacer.time_of(position) + self._tail


def _write_all(pcm: alsaaudio.PCM, data: bytes) -> None:
    view = memoryview(data)
    underruns = 0
    while view:
        written = pcm.write(view)
        if written < 0:  # an underrun: pyalsaaudio prepared the stream again, nothing was written
            underruns += 1
            if underruns > 3:
                raise alsaaudio.ALSAAudioError(f"underrun after underrun ({written})")
            continue
        view = view[written * 2 :]


def _mix(a: bytes, b: bytes) -> bytes:
    if not b:
        return a
    if not a:
        return b
    n = max(len(a), len(b)) // 2
    total = np.zeros(n, dtype=np.int32)
    total[: len(a) // 2] += np.frombuffer(a, dtype=np.int16)
    total[: len(b) // 2] += np.frombuffer(b, dtype=np.int16)
    return np.clip(total, -32768, 32767).astype(np.int16).tobytes()


# Sounds


def tone(cue: CueSettings, rate: int, frequency_hz: float | None = None) -> bytes:
    """The listening cue: a sine with 10 ms raised-cosine edges, so it doesn't click."""
    n = round(rate * cue.duration_ms / 1000)
    t = np.arange(n) / rate
    wave = np.sin(2 * math.pi * (frequency_hz or cue.frequency_hz) * t) * cue.volume
    edge = min(n // 2, round(rate * 0.01))
    if edge:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, edge))
        wave[:edge] *= ramp
        wave[n - edge :] *= ramp[::-1]
    return (wave * 32767).astype(np.int16).tobytes()


def earcon(cue: CueSettings, rate: int, *, rising: bool) -> bytes:
    """Two notes a fifth apart, rising (the wake word heard, unmuted) or falling (muted)."""
    low, high = tone(cue, rate), tone(cue, rate, cue.frequency_hz * 1.5)
    return low + high if rising else high + low


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(mono int16 samples, rate) of PCM WAV, tolerating the sizes a streaming writer leaves unset."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt != 1 or bits != 16:
                raise ValueError(f"only 16-bit PCM WAV is supported (format {fmt}, {bits} bits)")
        elif chunk == b"data":
            if not rate:
                raise ValueError("WAV data before its format")
            end = min(len(data), body + size)
            end -= (end - body) % (2 * channels)
            samples = np.frombuffer(data[body:end], dtype="<i2")
            if channels > 1:
                samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
            return samples, rate
        pos = body + size + (size & 1)
    raise ValueError("WAV without data")


def resample(samples: np.ndarray, rate: int, target: int) -> bytes:
    """Linear-interpolation resampling to mono S16_LE at `target`: plenty for a spoken code."""
    if rate == target or samples.size == 0:
        return samples.astype("<i2").tobytes()
    n = int(samples.size * target / rate)
    positions = np.arange(n) * (rate / target)
    out = np.interp(positions, np.arange(samples.size), samples.astype(np.float32))
    return np.clip(out, -32768, 32767).astype("<i2").tobytes()


class SpeechError(RuntimeError):
    """Text-to-speech did not work; the message says why."""


async def synthesize(command: tuple[str, ...], text: str, rate: int, *, limit_sec: float = 30.0) -> bytes:
    """Speak `text` with the command (WAV on stdout), as mono S16_LE at `rate`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            text,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise SpeechError(f"cannot run {command[0]!r}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_sec)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SpeechError(f"{command[0]} took longer than {limit_sec:g} s") from None
    if proc.returncode != 0:
        raise SpeechError(
            f"{command[0]} exited with {proc.returncode}: {err.decode(errors='replace').strip()}"
        )
    try:
        samples, source_rate = decode_wav(out)
    except (ValueError, struct.error) as exc:
        raise SpeechError(f"{command[0]} did not write WAV audio: {exc}") from exc
    return resample(samples, source_rate, rate)


# The microphone path, callable from the benchmark


async def pump_capture(
    settings: Settings,
    seconds: float,
    sink: Callable[[Frame], Awaitable[None]],
    listening: Listening | None = None,
) -> PumpStats:
    """Capture `seconds` of audio from the configured microphone through the wake word (if
    `listening`) and the VAD into `sink`.

    This is the satellite's microphone path without the room: what the benchmark measures."""
    limit = math.ceil(seconds * 1000 / settings.audio.period_ms)
    gate = SpeechGate(settings.vad, settings.audio.period_ms)
    async with Microphone(settings.audio, gate=gate, listening=listening, limit=limit) as mic:
        async for frame in mic:
            await sink(frame)
    return mic.stats
