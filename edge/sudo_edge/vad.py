"""Voice activity detection light enough for a Pi: frame energy against an adaptive noise floor.

A frame is speech when its level (RMS in dBFS) is `threshold_db` above the room's noise floor and
above `min_level_dbfs`. The floor follows quieter frames at once and louder ones slowly
(`floor_rise_db_per_sec`), so it tracks the pauses between words rather than the words, and a
fridge that starts humming raises it within seconds.

While the speaker plays, the loudest sound in the room is the agent itself, coming back through
the microphone. There is no echo canceller; instead the gate knows what the speaker played and
when (`echo_db`, the loudest the speaker gave out over the echo tail before the frame) and learns
how loud that comes back at the microphone (`EchoEstimate`, from the sounds heard while nobody
talks). A sound is then speech only if it is `barge_in_db` above that echo: the agent does not hear
itself, and a person speaking up over it is heard and interrupts it.

`SpeechGate` decides which frames leave the Pi: none while the room is quiet; once speech has
lasted `start_ms`, the `preroll_ms` that came before it, then every frame until `hangover_ms`
after the last speech frame. The hangover carries the trailing silence the agent's own
end-of-turn detection waits for.
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

import numpy as np

from .settings import VadSettings

SILENCE_DBFS = -120.0
"""The level given to digital silence (dBFS)."""


class Frame(NamedTuple):
    index: int
    """Position in the capture, counted in periods from its start."""
    pcm: bytes
    """One period of mono S16_LE audio."""


def level_dbfs(pcm: bytes) -> float:
    """RMS level of S16_LE audio relative to full scale (dBFS)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    if samples.size == 0:
        return SILENCE_DBFS
    power = float(np.dot(samples, samples)) / samples.size
    if power <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10 * math.log10(power / (32768.0 * 32768.0)))


class EnergyVad:
    def __init__(self, settings: VadSettings, period_ms: int) -> None:
        self.settings = settings
        self._rise = settings.floor_rise_db_per_sec * period_ms / 1000
        self.floor: float | None = None
        """Current estimate of the room's noise level (dBFS)."""

    def is_speech(self, level: float) -> bool:
        if self.floor is None:
            self.floor = level
        speech = level >= max(self.floor + self.settings.threshold_db, self.settings.min_level_dbfs)
        self.floor = min(level, self.floor + self._rise)
        return speech


class EchoEstimate:
    """How much quieter (or louder) the speaker's sound is at the microphone than as played.

    `echo_db` is the loudest the speaker played over the echo tail, so a frame of pure echo is at
    most `coupling_db` above it, and usually below (between the peaks of the agent's words). The
    estimate therefore follows a louder echo quickly and a quieter one slowly: it sits at the
    echo's peaks, where a voice must stand out, and not at its average.
    """

    RISE = 0.3
    """Weight of a frame louder than the estimate: a louder echo is never taken for a voice for long."""
    FALL = 0.05
    """Weight of a quieter frame: from the worst case (0 dB) to a speaker across the room in ~1 s."""

    def __init__(self, settings: VadSettings) -> None:
        self.settings = settings
        self.coupling_db = settings.echo_coupling_db

    def is_voice(self, level: float, echo_db: float, *, learn: bool) -> bool:
        """Whether a sound at `level` is a voice over the speaker's `echo_db`; if not, and `learn`,
        it is the echo itself and the estimate learns from it."""
        coupling = level - echo_db
        if coupling - self.coupling_db >= self.settings.barge_in_db:
            return True
        if learn:
            weight = self.RISE if coupling > self.coupling_db else self.FALL
            self.coupling_db += weight * (coupling - self.coupling_db)
        return False


class SpeechGate:
    def __init__(self, settings: VadSettings, period_ms: int) -> None:
        self.vad = EnergyVad(settings, period_ms)
        self.echo = EchoEstimate(settings)
        self._period_ms = period_ms
        self._start = max(1, math.ceil(settings.start_ms / period_ms))
        self._hangover = math.ceil(settings.hangover_ms / period_ms)
        self._recent: collections.deque[Frame] = collections.deque(
            maxlen=math.ceil(settings.preroll_ms / period_ms) + self._start
        )
        self._run = 0
        self._quiet = 0
        self.open = False
        """Whether frames are being sent."""

    def push(self, frame: Frame, echo_db: float | None = None) -> list[Frame]:
        """The frames to send now, in order: none, this one, or the preroll and this one.
        `echo_db`: the level the speaker played around this frame's time, while it plays."""
        level = level_dbfs(frame.pcm)
        speech = self.vad.is_speech(level)
        if speech and echo_db is not None:  # a sound while the speaker plays: the agent, or a voice?
            speech = self.echo.is_voice(level, echo_db, learn=not self.open)
        if self.open:
            self._quiet = 0 if speech else self._quiet + 1
            if self._quiet <= self._hangover:
                return [frame]
            self.open = False
            self._run = 0
        self._recent.append(frame)
        self._run = self._run + 1 if speech else 0
        if self._run < self._start:
            return []
        self.open = True
        self._quiet = 0
        sent = list(self._recent)
        self._recent.clear()
        return sent

    def hold_open(self, seconds: float) -> None:
        """Send every frame from now on, quiet ones too, until `seconds` pass without speech
        (then the hangover, as usual). After the wake word the question follows: sent as it
        comes, it needs no preroll, whose burst would keep the stream a preroll behind real time
        until the end of the question, and the agent's answer as late."""
        self.open = True
        self._run = 0
        self._recent.clear()
        self._quiet = -math.ceil(seconds * 1000 / self._period_ms)

    def reset(self) -> None:
        """Close the gate and forget the preroll (the noise floor is kept)."""
        self.open = False
        self._run = 0
        self._quiet = 0
        self._recent.clear()
