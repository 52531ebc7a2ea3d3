"""The Pi's package on the Pi's architecture: sudo-edge built for arm64 (make deb-edge ARCH=arm64),
installed into an arm64 Debian 12 with systemd as PID 1, paired with the installed server
(amd64, tests/e2e/conftest.py), heartbeating, and hearing its wake word.

The machine is a container of the arm64 systemd image (make pi-image) that this amd64 machine
runs through qemu-user-static's binfmt_misc entry: every binary in it (systemd, dpkg, Python, the
wheels' compiled code, pyalsaaudio as compiled for aarch64) is aarch64 code that qemu translates.

What emulation proves: the arm64 package installs with dpkg, its dependencies coming from
Debian's arm64 archive; its unit starts under systemd; its aarch64 virtualenv loads (livekit,
numpy, the wake word's TFLite runtime, pyalsaaudio against arm64 alsa-lib); it pairs and
heartbeats; microWakeWord fires on "okay nabu" read through ALSA, in the arm64 machine.
What it does not: a real Pi (its CPU beyond what qemu models, its speed: qemu is many times
slower, so nothing here is timed), a real sound card (no /dev/snd: the microphone is alsa-lib's
file plugin, as in tests/edge), and two parts of the unit's sandbox qemu-user cannot run,
turned off by a drop-in here: the system call filter (qemu refuses seccomp, so systemd goes
without it) and PrivateIPC= (systemd's namespace hand-over fails under qemu). The amd64 device
of tests/e2e/test_install.py runs the unit with both.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from machines import Host, Machine, heard_from, install_edge, pair_edge, start_machine

ROOT = Path(__file__).resolve().parents[2]
PI_IMAGE = os.environ.get("PI_IMAGE", "sudo-systemd:bookworm-arm64")

# The daemon's own microphone path, with the installed package: ALSA capture, the VAD's gate and
# the wake word, on a recording instead of a card.
WAKE = """
import asyncio
import os
import platform

from sudo_edge.audio import Microphone
from sudo_edge.settings import AudioSettings, VadSettings
from sudo_edge.vad import SpeechGate
from sudo_edge.wake import Listening, WakeWord


def woken() -> None:
    print("wake word heard on", platform.machine(), flush=True)


async def main() -> None:
    audio = AudioSettings(mic_device="recording")
    listening = Listening(WakeWord("okay_nabu"), 5.0, woken)
    gate = SpeechGate(VadSettings(), audio.period_ms)
    frames = os.path.getsize("/probe/okay-nabu.raw") // audio.period_bytes
    async with Microphone(audio, gate=gate, listening=listening, limit=frames) as mic:
        async for _ in mic:
            pass


asyncio.run(main())
"""


def installed(pi: Machine) -> Machine:
    install_edge(pi)
    return pi


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[Machine]]:
    """The arm64 machine, with dist/ at /debs and the wake word's recording and script at /probe,
    sudo-edge being installed: in a thread, while the `host` fixture installs the server (each
    keeps a core busy; emulated, the install takes about 45 s)."""
    if not sorted((ROOT / "dist/edge").glob("sudo-edge_*_arm64.deb")):
        pytest.fail("no arm64 sudo-edge in dist/edge: run `make deb-edge ARCH=arm64` first")
    try:
        docker.from_env().images.get(PI_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {PI_IMAGE} is missing: run `make pi-image` first")
    probe = tmp_path_factory.mktemp("probe")
    # espeak-ng's "okay nabu" with a second of silence before and two after, as 16 kHz mono S16_LE
    subprocess.run(
        "espeak-ng --stdout 'okay nabu' | sox -t wav - -t raw -r 16000 -c 1 -b 16 -e signed-integer "
        f"{probe}/okay-nabu.raw pad 1 2",
        shell=True,
        check=True,
    )
    (probe / "asoundrc").write_text(
        'pcm.recording { type file slave.pcm "null" file "/dev/null" '
        'infile "/probe/okay-nabu.raw" format "raw" }\n'
    )
    (probe / "wake.py").write_text(WAKE)
    machine = start_machine(
        f"sudo-e2e-pi-arm64-{secrets.token_hex(3)}",
        image=PI_IMAGE,
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(ROOT / "dist"): {"bind": "/debs", "mode": "ro"},
            str(probe): {"bind": "/probe", "mode": "ro"},
        },
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            yield pool.submit(installed, machine)
    finally:
        machine.container.remove(force=True)


# `pi` before `host`: the fixtures are set up in this order, so the Pi installs while the server does
def test_the_pis_package_pairs_heartbeats_and_hears_its_wake_word(
    pi: Future[Machine], host: Host, family: str
):
    machine = pi.result()
    assert machine.sh("uname -m") == "aarch64"
    assert machine.sh("dpkg-query -W -f '${Architecture}' sudo-edge") == "arm64"
    machine.write("/etc/systemd/system/sudo-edge.service.d/qemu.conf", "[Service]\nPrivateIPC=no\n")
    machine.sh("systemctl daemon-reload")

    pair_edge(machine, host, family)
    (device,) = host.wait(lambda: heard_from(host, family), 60, "a heartbeat from the arm64 device")
    assert device["name"] == machine.sh("hostname")
    assert machine.state("sudo-edge.service") == "active"

    alsa = "ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:/probe/asoundrc"
    heard = machine.sh(f"{alsa} /opt/venvs/sudo-edge/bin/python /probe/wake.py")
    assert "wake word heard on aarch64" in heard, heard
