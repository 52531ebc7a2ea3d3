"""Real ALSA for the edge tests, through alsa-lib's `file` plugin (no sound card needed).

One asoundrc for the session defines a pool of microphones (each capturing from its own
prepared recording, then zeros) and speakers (each writing a WAV file); a test takes a fresh
pair. The recording is real synthesized speech: espeak-ng, converted with sox to 16 kHz mono
S16_LE, with quiet room noise before, under and after it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_support import RATE, AudioDevices, Recording, make_recording

POOL = 48


@pytest.fixture(scope="session")
def alsa_dir() -> Iterator[Path]:
    """Writes the asoundrc and points alsa-lib in this test process at it."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed by the edge tests: apt-get install espeak-ng sox")
    root = Path(tempfile.mkdtemp(prefix="sudo-edge-alsa-"))
    lines = []
    for i in range(POOL):
        mic = f'type file slave.pcm "null" file "/dev/null" infile "{root}/mic{i}.raw" format "raw"'
        speaker = f'type file slave.pcm "null" file "{root}/speaker{i}.wav" format "wav"'
        lines += [f"pcm.mic{i} {{ {mic} }}", f"pcm.speaker{i} {{ {speaker} }}"]
    (root / "asoundrc").write_text("\n".join(lines) + "\n")
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{root}/asoundrc"
    yield root
    if previous is None:
        os.environ.pop("ALSA_CONFIG_PATH", None)
    else:
        os.environ["ALSA_CONFIG_PATH"] = previous
    shutil.rmtree(root, ignore_errors=True)


_pairs = itertools.count()


@pytest.fixture
def devices(alsa_dir: Path) -> AudioDevices:
    """A microphone and a speaker no other test has used; the microphone starts with 1 s of zeros."""
    i = next(_pairs)
    assert i < POOL, "raise POOL in tests/edge/conftest.py"
    pair = AudioDevices(f"mic{i}", alsa_dir / f"mic{i}.raw", f"speaker{i}", alsa_dir / f"speaker{i}.wav")
    pair.prepare_mic(bytes(RATE * 2))
    return pair


@pytest.fixture(scope="session")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return make_recording(
        tmp_path_factory.mktemp("recording"), "Hello Sudo, what is the weather like in Paris tomorrow?", 1.5
    )
