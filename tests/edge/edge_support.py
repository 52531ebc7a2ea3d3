"""Helpers shared by the edge tests: sound files, speech, a notify socket, waiting for conditions."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000


@dataclass
class AudioDevices:
    mic: str
    """ALSA name of a capture PCM reading `mic_file`, then zeros."""
    mic_file: Path
    speaker: str
    """ALSA name of a playback PCM writing `speaker_file` (WAV)."""
    speaker_file: Path

    def prepare_mic(self, pcm: bytes) -> None:
        self.mic_file.write_bytes(pcm)

    def speaker_pcm(self) -> bytes:
        """The samples written so far (the WAV header's sizes are only final at close)."""
        data = self.speaker_file.read_bytes() if self.speaker_file.exists() else b""
        if len(data) < 44:
            return b""
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data", data[:44]
        return data[44:]


@dataclass(frozen=True)
class Recording:
    pcm: bytes
    """Mono S16_LE at 16 kHz: room noise, the sentence (with the noise under it), room noise."""
    speech: bytes
    """The sentence alone, without padding or noise."""
    speech_start: float
    """Where the sentence's sound begins in `pcm` (seconds)."""
    speech_end: float
    """Where it ends (seconds)."""

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / RATE


RAW = ["-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]


def speak(text: str) -> bytes:
    """espeak-ng's speech for `text` through sox, as mono S16_LE at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    return subprocess.run(
        ["sox", "-t", "wav", "-", *RAW, "-"], input=wav, check=True, capture_output=True
    ).stdout


def make_recording(directory: Path, sentence: str, pad_sec: float) -> Recording:
    speech = speak(sentence)
    (directory / "speech.raw").write_bytes(speech)
    padded, noise, mix = directory / "padded.raw", directory / "noise.raw", directory / "mix.raw"
    subprocess.run(
        ["sox", *RAW, directory / "speech.raw", *RAW, padded, "pad", str(pad_sec), str(pad_sec)], check=True
    )
    seconds = len(padded.read_bytes()) / 2 / RATE
    subprocess.run(
        ["sox", "-n", *RAW, noise, "synth", f"{seconds}", "whitenoise", "vol", "0.002"], check=True
    )
    subprocess.run(["sox", "-m", "-v", "1", *RAW, padded, "-v", "1", *RAW, noise, *RAW, mix], check=True)
    samples = np.frombuffer(speech, dtype=np.int16).astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) > 300)  # about -40 dBFS
    return Recording(
        pcm=mix.read_bytes(),
        speech=speech,
        speech_start=pad_sec + loud[0] / RATE,
        speech_end=pad_sec + loud[-1] / RATE,
    )


def tone_power(pcm: bytes, frequency: float) -> float:
    """Share of the signal's power within 30 Hz of `frequency` (0..1)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    if samples.size == 0 or not samples.any():
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / RATE)
    return float(spectrum[np.abs(freqs - frequency) < 30].sum() / spectrum.sum())


async def until(predicate: Callable[[], object], what: str, within: float = 10.0) -> None:
    """Wait for a condition that no event announces (a file growing, a log line)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class NotifyListener:
    """A fake NOTIFY_SOCKET: the datagrams sd_notify sends, as systemd would receive them."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sn-", dir="/tmp")  # AF_UNIX paths are short
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self._changed.set()

    def statuses(self) -> list[str]:
        return [line[7:] for m in self.messages for line in m.splitlines() if line.startswith("STATUS=")]

    def last_status(self) -> str:
        statuses = self.statuses()
        return statuses[-1] if statuses else ""

    async def wait_for(
        self, predicate: Callable[[list[str]], object], what: str, within: float = 10.0
    ) -> None:
        try:
            async with asyncio.timeout(within):
                while not predicate(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} in {self.messages}") from None

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)
