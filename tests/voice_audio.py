"""Audio in and out of a voice session without a LiveKit room, for tests and benchmarks.

`RecordingInput` plays a recording into the session as a microphone in a quiet room would (20 ms
frames, paced in real time, then the room's silence); `CapturedOutput` is a speaker that records
what the agent says and when each reply's first audio arrived, and `heard` what pocketsphinx
makes of it. Speech is synthesized with espeak-ng, as the issue asks.
"""

from __future__ import annotations

import array
import asyncio
import subprocess
import time
import wave
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

from sudo_core.config import VoiceSettings
from sudo_voice_bridge.session import load_vad
from sudo_voice_bridge.speech import PocketsphinxSTT

RATE = 16000
FRAME = RATE // 50  # 20 ms
ROOM_NOISE_DBFS = -60.0
"""The noise floor a microphone hears in a quiet room. Digital silence around speech makes
pocketsphinx's result hinge on exactly where the VAD cut the utterance; a real room never is."""


def spoken(text: str, voice: str = "en-us+m3", words_per_minute: int = 160) -> bytes:
    """`text` as espeak-ng says it: 16 kHz mono S16_LE, without espeak-ng's silence around it
    (so the end of the recording is the end of the speech)."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(words_per_minute), text],
        capture_output=True,
        check=True,
    ).stdout
    pcm = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1", "-"],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout
    samples = array.array("h", pcm)
    loud = [i for i, v in enumerate(samples) if abs(v) > 300]
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud else pcm


def silence(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


def in_room_noise(pcm: bytes, seed: int = 0) -> bytes:
    """`pcm` (16 kHz mono) as a microphone in a quiet room hears it: over its noise floor."""
    noise = np.random.default_rng(seed).normal(0, 32768 * 10 ** (ROOM_NOISE_DBFS / 20), len(pcm) // 2)
    samples = np.frombuffer(pcm, dtype=np.int16) + noise
    return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


async def wait_until(predicate, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingInput(io.AudioInput):
    """A microphone hearing `pcm` (16 kHz mono), in real time, then silence forever."""

    def __init__(self) -> None:
        super().__init__(label="recording")
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = b""
        self._next_at: float | None = None
        self._frames = 0
        self.speech_ended_at: list[float] = []
        """Monotonic times at which each played recording's speech ended (its trailing silence began)."""

    def play(self, pcm: bytes, trailing_silence: float = 0.0) -> None:
        self._queue.put_nowait(pcm)
        self._queue.put_nowait(b"END")
        if trailing_silence:
            self._queue.put_nowait(silence(trailing_silence))

    async def __anext__(self) -> rtc.AudioFrame:
        now = time.monotonic()
        if self._next_at is None:
            self._next_at = now
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at += FRAME / RATE
        while len(self._pending) < 2 * FRAME and not self._queue.empty():
            chunk = self._queue.get_nowait()
            if chunk == b"END":
                # The speech ends once what is pending has been heard.
                self.speech_ended_at.append(self._next_at - FRAME / RATE + len(self._pending) / 2 / RATE)
                continue
            self._pending += chunk
        data, self._pending = self._pending[: 2 * FRAME], self._pending[2 * FRAME :]
        noisy = in_room_noise(data.ljust(2 * FRAME, b"\0"), self._frames)
        self._frames += 1
        return rtc.AudioFrame(noisy, RATE, 1, FRAME)


@dataclass
class Reply:
    first_audio_at: float
    pcm: bytearray = field(default_factory=bytearray)
    sample_rate: int = 0
    interrupted: bool = False
    played_sec: float | None = None
    """How much of it the speaker played, once it finished or was cut short."""


class CapturedOutput(io.AudioOutput):
    """A speaker that keeps every reply's audio; playback takes real time, like a speaker's."""

    def __init__(self) -> None:
        super().__init__(label="captured", capabilities=io.AudioOutputCapabilities(pause=False))
        self.replies: list[Reply] = []
        self._current: Reply | None = None
        self._played = 0.0
        self._started: float | None = None
        self._finish: asyncio.TimerHandle | None = None
        self.reply_started = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._current is None:
            self._current = Reply(first_audio_at=time.monotonic(), sample_rate=frame.sample_rate)
            self.replies.append(self._current)
            self._started = time.monotonic()
            self._played = 0.0
            self.on_playback_started(created_at=time.time())
            self.reply_started.set()
        self._current.pcm += bytes(frame.data)
        self._played += frame.samples_per_channel / frame.sample_rate

    def flush(self) -> None:
        super().flush()
        if self._current is None:
            return
        # Finished when a speaker would have played it all.
        remaining = max(0.0, self._played - (time.monotonic() - (self._started or 0.0)))
        played = self._played
        self._current = None
        self._finish = asyncio.get_running_loop().call_later(remaining, self._finished, played)

    def _finished(self, played: float) -> None:
        self._finish = None
        self.replies[-1].played_sec = played
        self.on_playback_finished(playback_position=played, interrupted=False)

    def clear_buffer(self) -> None:
        playing = self._current is not None or (self._finish is not None and not self._finish.cancelled())
        if self._finish is not None:
            self._finish.cancel()
        self._finish = None
        if not playing or not self.replies:
            return
        self._current = None
        self.replies[-1].interrupted = True
        position = time.monotonic() - (self._started or time.monotonic())
        self.replies[-1].played_sec = position
        self.on_playback_finished(playback_position=position, interrupted=True)


async def heard(speaker: CapturedOutput) -> str:
    """Everything the speaker played, as the bridge's offline speech-to-text hears it. Its general
    model hears espeak-ng's voice word for word on some sentences only (the weather's: "the
    weather will be sunny tomorrow"), so a test that checks words says one of those."""
    pcm = b"".join(bytes(reply.pcm) for reply in speaker.replies)
    frame = rtc.AudioFrame(pcm, speaker.replies[0].sample_rate, 1, len(pcm) // 2)
    event = await PocketsphinxSTT(load_vad(VoiceSettings())).recognize(buffer=frame)
    return event.alternatives[0].text


def transcribe(pcm: bytes) -> str:
    """The words pocketsphinx (the bridge's offline speech-to-text) hears in 16 kHz mono S16_LE."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=RATE, loglevel="ERROR")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.strip() if hyp else ""


def loud_seconds(pcm: bytes, rate: int = RATE, threshold_dbfs: float = -40.0) -> float:
    """From the first to the last 20 ms of mono S16_LE `pcm` louder than `threshold_dbfs`."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], np.int16).astype(np.float64)
    step = rate // 50
    chunks = samples[: len(samples) // step * step].reshape(-1, step)
    levels = 20 * np.log10(np.maximum(np.sqrt((chunks**2).mean(axis=1)), 1e-9) / 32768)
    loud = np.flatnonzero(levels > threshold_dbfs)
    return (loud[-1] - loud[0] + 1) / 50 if len(loud) else 0.0


def wav_pcm(wav: bytes) -> tuple[bytes, int]:
    """The samples and rate of a mono WAV (espeak-ng's streamed header has no length)."""
    with wave.open(BytesIO(wav)) as reader:
        return reader.readframes(1 << 30), reader.getframerate()
