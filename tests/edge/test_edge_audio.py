"""The Pi's audio through real ALSA (the `file` plugin): capture, VAD, playback, broken devices."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from edge_support import RATE, AudioDevices, Recording, tone_power, until

from sudo_edge.audio import AudioDeviceError, Microphone, Speaker, pump_capture, tone
from sudo_edge.settings import AudioSettings, CueSettings, Settings, VadSettings
from sudo_edge.vad import Frame, SpeechGate

PERIOD = 0.02


def audio_settings(devices: AudioDevices, **overrides) -> AudioSettings:
    return AudioSettings(mic_device=devices.mic, speaker_device=devices.speaker, **overrides)


@pytest.mark.alone  # paced by the clock; beside two busy workers it once read stray bytes past the end
async def test_capture_reads_the_recording_paced_in_real_time(devices: AudioDevices, recording: Recording):
    devices.prepare_mic(recording.pcm)
    frames = round(recording.duration / PERIOD)
    got = []
    started = time.monotonic()
    async with Microphone(audio_settings(devices)) as mic:
        async for frame in mic:
            got.append(frame)
            if len(got) == frames:
                break
    elapsed = time.monotonic() - started
    assert elapsed >= 0.8 * recording.duration, f"{recording.duration:.1f} s of audio read in {elapsed:.2f} s"
    assert [f.index for f in got] == list(range(frames))
    assert {len(f.pcm) for f in got} == {640}
    captured = b"".join(f.pcm for f in got)
    assert captured[: len(recording.pcm)] == recording.pcm
    assert not any(captured[len(recording.pcm) :]), "then the file plugin's zeros"


async def test_vad_sends_the_speech_and_not_the_silence_around_it(
    devices: AudioDevices, recording: Recording
):
    devices.prepare_mic(recording.pcm)
    settings = Settings(audio=audio_settings(devices))
    vad = settings.vad
    sent: list[Frame] = []

    async def sink(frame: Frame) -> None:
        sent.append(frame)

    stats = await pump_capture(settings, recording.duration, sink)

    assert stats.read == round(recording.duration / PERIOD) and stats.sent == len(sent)
    indexes = [f.index for f in sent]
    assert indexes == sorted(set(indexes)), "each frame sent once, in order"
    first, last = round(recording.speech_start / PERIOD), round(recording.speech_end / PERIOD)
    early = (vad.preroll_ms + vad.start_ms) / 1000 / PERIOD + 3
    late = vad.hangover_ms / 1000 / PERIOD + 3
    # The whole sentence is sent: the preroll covers its first syllable, the hangover its end.
    assert set(range(first, last + 1)) <= set(indexes)
    # Not the quiet room before or after it.
    assert min(indexes) >= first - early, f"sending started {(first - min(indexes)) * PERIOD:.2f} s early"
    assert max(indexes) <= last + late, f"sending stopped {(max(indexes) - last) * PERIOD:.2f} s late"
    assert len(sent) < 0.75 * stats.read
    for frame in sent:  # what was sent is the captured audio itself
        assert frame.pcm == recording.pcm[frame.index * 640 : (frame.index + 1) * 640]


def test_the_noise_floor_follows_a_louder_room_and_speech_still_opens_the_gate(recording: Recording):
    vad = VadSettings()
    gate = SpeechGate(vad, 20)
    rng = np.random.default_rng(7)

    def frames(samples: np.ndarray):
        for i in range(0, samples.size - 319, 320):
            yield samples[i : i + 320].astype(np.int16).tobytes()

    quiet = rng.normal(0, 10, RATE * 2)  # about -70 dBFS
    fan = rng.normal(0, 400, RATE * 12)  # about -38 dBFS: over the threshold until the floor follows
    index = 0
    opened_by_fan = False
    for pcm in [*frames(quiet), *frames(fan)]:
        gate.push(Frame(index, pcm))
        opened_by_fan |= gate.open
        index += 1
    assert opened_by_fan, "the fan's onset counts as sound for a while"
    assert not gate.open, "after seconds of the same fan it is the room's noise"
    speech = np.frombuffer(recording.speech, dtype=np.int16).astype(np.float64) * 4
    mixed = np.clip(speech + rng.normal(0, 400, speech.size), -32768, 32767)
    sent = []
    for pcm in frames(mixed):
        sent += gate.push(Frame(index, pcm))
        index += 1
    assert len(sent) > 0.5 * speech.size / 320, "speech over the fan is sent"


def test_after_the_wake_word_the_question_streams_as_it_comes_with_no_preroll_burst(recording: Recording):
    gate = SpeechGate(VadSettings(), 20)
    quiet = np.random.default_rng(3).normal(0, 10, RATE).astype(np.int16).tobytes()  # 1 s, -70 dBFS
    pause = [quiet[i : i + 640] for i in range(0, len(quiet), 640)]
    speech = [recording.speech[i : i + 640] for i in range(0, len(recording.speech) - 639, 640)]
    # Without the wake word's hold, speech opens the gate with its preroll: a burst of frames.
    bursts = [len(gate.push(Frame(i, pcm))) for i, pcm in enumerate(pause + speech)]
    assert max(bursts) > 1
    # Held open at the wake word: every frame leaves when it is heard, the pause before the
    # question included, one at a time, until the hangover after the question.
    gate.reset()
    gate.hold_open(2.0)
    sent = [gate.push(Frame(i, pcm)) for i, pcm in enumerate(pause + speech + pause + pause)]
    assert all(len(frames) == 1 for frames in sent[: len(pause) + len(speech)])
    assert not gate.open, "closed after the hangover that followed the question"
    assert sum(map(len, sent)) < len(sent)


async def test_playback_writes_exactly_the_frames_given(devices: AudioDevices, recording: Recording):
    speaker = Speaker(audio_settings(devices))
    speaker.start()
    started = time.monotonic()
    pcm = recording.speech
    sizes = [640, 320, 1280, 2, 638]  # the agent's frames need not be periods
    i = 0
    while i < len(pcm):
        size = sizes[i % len(sizes)]
        speaker.play(pcm[i : i + size])
        i += size
    await speaker.drained()
    elapsed = time.monotonic() - started
    await speaker.close()
    seconds = len(pcm) / 2 / RATE
    assert elapsed >= 0.8 * seconds - 0.1, f"{seconds:.1f} s of audio played in {elapsed:.2f} s"
    assert devices.speaker_pcm() == pcm


async def test_a_cue_is_mixed_in_and_never_delays_the_stream(devices: AudioDevices, recording: Recording):
    speaker = Speaker(audio_settings(devices))
    speaker.start()
    cue_settings = CueSettings(frequency_hz=1000, duration_ms=200)
    quiet = bytes(RATE * 2)  # 1 s of the agent's silence, as LiveKit streams it between turns
    speaker.play(quiet)
    speaker.overlay(tone(cue_settings, RATE))
    speaker.play(recording.speech)
    await speaker.drained()
    await speaker.close()
    out = devices.speaker_pcm()
    assert len(out) == len(quiet) + len(recording.speech), "the cue took no time of its own"
    assert tone_power(out[: RATE * 2 // 5], 1000) > 0.9, "the cue plays at once, over the silence"
    assert out[len(quiet) :] == recording.speech


async def test_a_loud_speaker_shuts_the_microphone_until_its_echo_has_died(devices: AudioDevices):
    speaker = Speaker(audio_settings(devices, echo_tail_ms=200))
    speaker.start()
    assert not speaker.is_sounding()
    speaker.play(tone(CueSettings(duration_ms=500), RATE))
    await until(speaker.is_sounding, "the speaker to sound")
    await speaker.drained()
    assert speaker.is_sounding(), "still within the echo tail"
    await until(lambda: not speaker.is_sounding(), "the echo tail to pass", within=2)
    await speaker.close()


def scaled(pcm: bytes, db: float) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * 10 ** (db / 20)


async def echo_and_voice(
    devices: AudioDevices, recording: Recording, *, play: bool
) -> tuple[list[Frame], SpeechGate]:
    """The agent's answer plays through the speaker (if `play`), and the microphone hears it come
    back 25 dB quieter and 100 ms late (the Pi's capture and playback buffers); 1.6 s in,
    someone speaks over it at full level. The frames the gate sends."""
    answer = recording.speech * 2
    delay, voice_at = round(0.1 * RATE), round(1.6 * RATE)
    heard = np.zeros(delay + len(answer) // 2 + RATE, dtype=np.float32)
    heard[delay : delay + len(answer) // 2] += scaled(answer, -25)
    heard[voice_at : voice_at + len(recording.speech) // 2] += scaled(recording.speech, 0)
    devices.prepare_mic(np.clip(heard, -32768, 32767).astype(np.int16).tobytes())
    settings = audio_settings(devices)
    speaker, gate = Speaker(settings), SpeechGate(VadSettings(), settings.period_ms)
    speaker.start()
    await until(lambda: speaker.up, "the speaker to open")
    sent: list[Frame] = []
    async with Microphone(
        settings, gate=gate, echo=speaker.echo_level, limit=round(len(heard) / RATE / PERIOD)
    ) as mic:
        if play:
            speaker.play(answer)
        async for frame in mic:
            sent.append(frame)
    await speaker.close()
    return sent, gate


async def test_the_speakers_echo_is_not_sent_and_a_voice_over_it_interrupts(
    devices: AudioDevices, recording: Recording
):
    vad = VadSettings()
    voice_start, voice_end = 1.6, 1.6 + len(recording.speech) / 2 / RATE
    # Without the speaker playing, the same sound at the microphone is all speech to the VAD...
    sent, _ = await echo_and_voice(devices, recording, play=False)
    assert sent[0].index * PERIOD < 0.5, "the echo alone opens the gate of a silent speaker"
    # ...with it playing, its echo is known for what it is: only the voice over it is sent.
    sent, gate = await echo_and_voice(devices, recording, play=True)
    first = sent[0].index * PERIOD
    assert voice_start - (vad.preroll_ms + vad.start_ms) / 1000 - 0.1 <= first <= voice_start + 0.3, first
    assert sent[-1].index * PERIOD >= voice_end - 0.3, "the voice is sent to its end"
    # It learned how loud the echo comes back (25 dB down), starting from the worst case (0 dB).
    assert -32 < gate.echo.coupling_db < -18, gate.echo.coupling_db


async def test_a_wrong_microphone_name_is_a_clear_error(alsa_dir):
    with pytest.raises(AudioDeviceError) as failed:
        async with Microphone(AudioSettings(mic_device="usb-mic-that-is-not-there")):
            pass
    message = str(failed.value)
    assert "'usb-mic-that-is-not-there'" in message
    assert "audio.mic_device" in message and "arecord -L" in message


async def test_a_broken_speaker_is_logged_and_retried_without_crashing(alsa_dir, caplog):
    caplog.set_level(logging.ERROR, logger="sudo-edge.audio")
    speaker = Speaker(AudioSettings(speaker_device="hdmi-speaker-that-is-not-there", retry_sec=0.1))
    speaker.start()

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "hdmi-speaker-that-is-not-there" in r.getMessage()]

    await until(lambda: len(failures()) >= 3, "three attempts to open the speaker")
    assert all("aplay -L" in m and "trying again in 0.1 s" in m for m in failures())
    speaker.play(bytes(640))  # dropped, not an error
    started = time.monotonic()
    await speaker.close()
    assert time.monotonic() - started < 1, "a retry wait does not hold up the shutdown"
