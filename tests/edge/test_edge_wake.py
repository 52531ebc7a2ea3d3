"""The wake word's state machine with the real microWakeWord model, on espeak-ng's speech, and a
clock the test moves: when the microphone's audio may leave the device."""

from __future__ import annotations

import pytest
from edge_support import speak

from sudo_edge.wake import Listening, WakeWord

FRAME = 640  # 20 ms at 16 kHz
SILENCE = bytes(FRAME)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME].ljust(FRAME, b"\0") for i in range(0, len(pcm), FRAME)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def woken() -> list[float]:
    return []


@pytest.fixture
def listening(clock: Clock, woken: list[float]) -> Listening:
    return Listening(WakeWord("okay_nabu"), 5.0, lambda: woken.append(clock()), clock)


def say(listening: Listening, clock: Clock, pcm: bytes, talking: bool = False) -> list[bool]:
    admitted = []
    for frame in frames(pcm):
        admitted.append(listening.admits(frame, talking))
        clock.now += 0.02
    return admitted


@pytest.mark.parametrize("word", ["okay_nabu", "alexa", "hey_mycroft"])
def test_each_wake_word_is_heard_and_fires_no_other(word: str):
    said = {
        w: frames(speak(w.replace("_", " ")) + bytes(32000)) for w in ("okay_nabu", "alexa", "hey_mycroft")
    }
    model = WakeWord(word)
    heard = {w: sum(model.heard(f) for f in audio) for w, audio in said.items()}
    assert heard == {w: int(w == word) for w in said}, "once for its own word, never for another"


def test_nothing_goes_before_the_wake_word(listening: Listening, clock: Clock, woken: list[float]):
    question = speak("What is the weather like in Paris tomorrow?")
    assert not any(say(listening, clock, question)), "speech without the wake word"
    assert woken == [] and listening.wakes == 0


def test_the_wake_word_opens_a_window_to_ask(listening: Listening, clock: Clock, woken: list[float]):
    admitted = say(listening, clock, speak("okay nabu") + bytes(6400))
    assert admitted.count(True) > 0 and not admitted[0], "the frames after the word go"
    assert len(woken) == 1 and listening.wakes == 1
    first = admitted.index(True)
    assert not admitted[first - 1], "the frame that ends the word itself is not sent"
    assert all(say(listening, clock, bytes(FRAME * 100))), "the window is open for follow_up_sec"
    clock.now = woken[0] + 5.01
    assert not listening.admits(SILENCE, False), "then it closes"
    assert listening.admits(SILENCE, True), "unless an utterance is still going on"


def test_the_agent_answering_keeps_it_open_and_a_reply_needs_no_wake_word(listening: Listening, clock: Clock):
    say(listening, clock, speak("okay nabu"))
    listening.agent_is("thinking")
    clock.now += 60  # a long answer
    listening.agent_is("speaking")
    assert listening.admits(SILENCE, False), "open while the agent answers: the family may talk over it"
    listening.agent_is("listening")
    clock.now += 4.9
    assert listening.admits(SILENCE, False), "the reply's window"
    clock.now += 0.2
    assert not listening.admits(SILENCE, False), "asleep again"
    listening.agent_is("listening")
    assert not listening.admits(SILENCE, False), "the agent listening with no turn going on opens nothing"


def test_a_mute_puts_it_to_sleep_at_once(listening: Listening, clock: Clock):
    say(listening, clock, speak("okay nabu"))
    listening.agent_is("speaking")
    listening.close()
    assert not listening.admits(SILENCE, False)


def test_the_agent_leaving_mid_answer_puts_it_to_sleep(listening: Listening, clock: Clock):
    """The voice bridge gone while it answered: the window it held open closes, and the next
    agent's first "listening" opens no reply's window."""
    say(listening, clock, speak("okay nabu"))
    listening.agent_is("speaking")
    assert listening.awake
    listening.close()  # what the satellite does when the agent leaves the room
    clock.now += 30
    listening.agent_is("listening")
    assert not listening.awake and not listening.admits(SILENCE, False)
