"""The wake word, and when the microphone's audio may leave the device.

With `voice.wake = "wakeword"`, nothing said near the device goes to the room until the wake
word is heard, on the device itself: microWakeWord (`pymicro-wakeword`, the Open Home
Foundation's detector that Home Assistant's satellites run) with its models shipped inside the
package, so no audio and no download ever leaves the home for it.

    asleep --wake word--> open for follow_up_sec --speech--> the turn: sent until the VAD's end
    the agent thinking or speaking: open (the family may talk over it)
    the agent listening again: open for follow_up_sec (a reply needs no wake word), then asleep

Everything here runs in the microphone's capture thread, frame by frame.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model


class WakeWord:
    """One microWakeWord model over 16 kHz mono S16_LE audio, fed in frames of any length."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._model = MicroWakeWord.from_builtin(Model(name))
        self._features = MicroWakeWordFeatures()

    def heard(self, pcm: bytes) -> bool:
        """Whether the word ends in this frame; after it does, detection starts afresh."""
        fired = False
        for features in self._features.process_streaming(pcm):
            fired = bool(self._model.process_streaming(features)) or fired
        if fired:  # the model's window still holds the word: it would fire again at once
            self._model.reset()
            self._features.reset()
        return fired


class Listening:
    """Whether a frame may go on to the VAD and the room: the wake word's state machine.

    `on_wake` is called (in the capture thread) when the word is heard: the earcon. The agent's
    states come from the room (the event loop) through `agent_is`."""

    def __init__(
        self,
        word: WakeWord,
        follow_up_sec: float,
        on_wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.word = word
        self.follow_up_sec = follow_up_sec
        self.on_wake = on_wake
        self.clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self.wakes = 0
        """Times the wake word was heard."""

    def admits(self, pcm: bytes, talking: bool) -> bool:
        """Whether this frame may be sent; `talking`: the VAD is in the middle of an utterance,
        which is never cut off when the window closes."""
        with self._lock:
            if talking or self.clock() < self._open_until:
                return True
        if not self.word.heard(pcm):
            return False
        self.wakes += 1
        self._open_for(self.follow_up_sec)
        self.on_wake()
        return False  # the word itself is not sent: the question after it is

    def agent_is(self, state: str) -> None:
        """Follow the agent: open while it thinks or speaks, a follow-up window once it listens."""
        if state in ("thinking", "speaking"):
            self._open_for(math.inf)
        elif state == "listening":
            with self._lock:
                if self._open_until > self.clock():  # a turn was going on: the reply's window
                    self._open_until = self.clock() + self.follow_up_sec

    @property
    def awake(self) -> bool:
        """Whether frames go now without the word (a turn or its reply's window is on)."""
        with self._lock:
            return self.clock() < self._open_until

    def close(self) -> None:
        """Asleep at once: the device was muted, or the agent left (no turn goes on without it,
        and a new agent's first "listening" must not open a reply's window)."""
        with self._lock:
            self._open_until = 0.0

    def _open_for(self, seconds: float) -> None:
        with self._lock:
            self._open_until = self.clock() + seconds
