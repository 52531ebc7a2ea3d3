"""Benchmark: CPU that sudo-edge's microphone path costs per second of audio.

Prints one JSON object per figure, one per line (tests/bench/report.py):

- edge_cpu_per_audio_sec: process CPU seconds (all threads) per second of audio for sudo-edge's
  own path, `sudo_edge.audio.pump_capture`: ALSA capture in its thread, paced in real time,
  frames handed to the event loop, the VAD and its gate, into a sink that takes what is sent;
- baseline: the CPU per second of merely reading the same audio from the same ALSA device, in
  the same periods, paced the same way, in a plain loop (what `arecord` would cost);
- ratio: edge / baseline;
- edge_wake_cpu_per_audio_sec: the same with the wake word listening (voice.wake = "wakeword"),
  against the same baseline: one sentence in three starts with "okay nabu".

The audio is real: espeak-ng sentences with pauses between them and quiet room noise, played
through alsa-lib's `file` plugin (no sound card needed), so the VAD sees speech and silence
as at home. Both runs take real time: `--seconds 20` takes about 40 s.

    .venv/bin/python tests/edge/bench_edge.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from edge_support import RATE, RAW, speak
from report import emit

SENTENCES = [
    "Hello Sudo, what is the weather like tomorrow?",
    "Remind me to call grandma at six.",
    "Okay nabu, play something calm in the kitchen.",
]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(directory: Path, seconds: float) -> Path:
    """`seconds` of room noise with a sentence every few seconds, as raw 16 kHz S16_LE."""
    pause = bytes(RATE * 2 * 2)  # 2 s between sentences
    pcm = bytearray()
    i = 0
    while len(pcm) < seconds * RATE * 2:
        pcm += speak(SENTENCES[i % len(SENTENCES)]) + pause
        i += 1
    clean = directory / "clean.raw"
    clean.write_bytes(bytes(pcm[: int(seconds * RATE) * 2]))
    noise, mix = directory / "noise.raw", directory / "mic.raw"
    subprocess.run(
        ["sox", "-n", *RAW, noise, "synth", str(seconds), "whitenoise", "vol", "0.002"], check=True
    )
    subprocess.run(["sox", "-m", "-v", "1", *RAW, clean, "-v", "1", *RAW, noise, *RAW, mix], check=True)
    (directory / "asoundrc").write_text(
        f'pcm.benchmic {{ type file slave.pcm "null" file "/dev/null" infile "{mix}" format "raw" }}\n'
    )
    return directory / "asoundrc"


def baseline(settings, seconds: float) -> float:
    """CPU seconds to read `seconds` of audio from the device, paced, and nothing else."""
    import alsaaudio

    a = settings.audio
    pcm = alsaaudio.PCM(
        alsaaudio.PCM_CAPTURE,
        alsaaudio.PCM_NORMAL,
        device=a.mic_device,
        channels=1,
        rate=a.sample_rate,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=a.period_frames,
    )
    periods = round(seconds * 1000 / a.period_ms)
    start_cpu, t0 = cpu(), time.monotonic()
    for n in range(1, periods + 1):
        pcm.read()
        due = t0 + n * a.period_ms / 1000
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    used = cpu() - start_cpu
    pcm.close()
    return used


async def edge(settings, seconds: float, listening=None) -> tuple[float, float]:
    """(CPU seconds, fraction of frames sent) for sudo-edge's microphone path over `seconds`."""
    from sudo_edge.audio import pump_capture

    sent = 0

    async def sink(_frame) -> None:
        nonlocal sent
        sent += 1

    start_cpu = cpu()
    stats = await pump_capture(settings, seconds, sink, listening)
    return cpu() - start_cpu, sent / stats.read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per run (seconds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        asoundrc = prepare(Path(tmp), args.seconds)
        os.environ["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{asoundrc}"
        from sudo_edge.settings import ApiSettings, AudioSettings, Settings
        from sudo_edge.wake import Listening, WakeWord

        settings = Settings(
            api=ApiSettings(url="https://sudo.example.org"), audio=AudioSettings(mic_device="benchmic")
        )
        base = baseline(settings, args.seconds)
        used, sent = asyncio.run(edge(settings, args.seconds))
        listening = Listening(WakeWord(settings.voice.wake_word), settings.voice.follow_up_sec, lambda: None)
        used_wake, sent_wake = asyncio.run(edge(settings, args.seconds, listening))
    reference = base / args.seconds
    emit(
        "edge_cpu_per_audio_sec",
        used / args.seconds,
        reference,
        unit="cpu_s/audio_s",
        audio_sec=args.seconds,
        sent_fraction=round(sent, 3),
    )
    emit(
        "edge_wake_cpu_per_audio_sec",
        used_wake / args.seconds,
        reference,
        unit="cpu_s/audio_s",
        audio_sec=args.seconds,
        sent_fraction=round(sent_wake, 3),
        wakes=listening.wakes,
        wake_word=settings.voice.wake_word,
    )


if __name__ == "__main__":
    main()
