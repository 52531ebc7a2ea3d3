"""The `sudo-edge` program as systemd runs it: a process with a config file, sd_notify and a watchdog.

It runs with the real LiveKit room implementation; the LiveKit URL sudo-api hands out refuses
connections (no LiveKit server can run here), which the daemon must live with.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from edge_support import AudioDevices, NotifyListener
from ports import free_port
from standin_api import StandinApi

EXE = Path(sys.executable).with_name("sudo-edge")


def config(api_url: str, tmp_path: Path, devices: AudioDevices) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[api]
url = "{api_url}"
timeout_sec = 1.0

[device]
name = "Living room"
state_dir = "{tmp_path / "state"}"
control_socket = "{tmp_path / "control.sock"}"

[pairing]
poll_sec = 0.1
announce_every_sec = 0

[reconnect]
min_sec = 0.1
max_sec = 0.5

[voice]
connect_timeout_sec = 2.0

[audio]
mic_device = "{devices.mic}"
speaker_device = "{devices.speaker}"
"""
    )
    return path


async def test_the_daemon_notifies_systemd_pairs_and_stops_cleanly(tmp_path: Path, devices: AudioDevices):
    api = StandinApi(heartbeat_sec=0.3, livekit_url=f"ws://127.0.0.1:{free_port()}")
    await api.start()
    notify = NotifyListener()
    env = os.environ | {
        "SUDO_EDGE_CONFIG": str(config(api.url, tmp_path, devices)),
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "200000",
    }
    proc = await asyncio.create_subprocess_exec(EXE, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        await notify.wait_for(lambda m: m and m[0].startswith("READY=1"), "READY=1")
        await notify.wait_for(lambda m: m.count("WATCHDOG=1") >= 3, "watchdog pings")
        await api.wait_for(lambda: api.codes, "a pairing request")
        code = api.codes[0]
        await notify.wait_for(
            lambda _: f"pairing: code {code}, enter it on /integrations" in notify.statuses(), ""
        )
        api.complete(code)
        await api.wait_for(lambda: len(api.heartbeats) >= 2, "heartbeats")
        await notify.wait_for(
            lambda _: any(
                s.startswith("paired; LiveKit unreachable, retrying in") for s in notify.statuses()
            ),
            "the LiveKit outage in STATUS",
        )
        assert (tmp_path / "state" / "device.json").exists()

        # The family mutes the device from its shell: the daemon answers, its beats say so.
        mute = await asyncio.create_subprocess_exec(
            EXE, "mute", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await mute.communicate()
        assert mute.returncode == 0 and out.decode().startswith("muted ("), err
        await api.wait_for(lambda: api.muted[-1:] == [True], "a heartbeat saying muted")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            stderr = (await proc.stderr.read()).decode()
            await proc.wait()
        notify.close()
        await api.stop()
    assert proc.returncode == 0, stderr
    assert "STOPPING=1" in notify.messages
    assert f"pairing code {code}: enter it on /integrations" in stderr
    assert "cannot join the LiveKit room" in stderr
    assert "Traceback" not in stderr, stderr


async def test_a_bad_configuration_ends_the_daemon_with_the_reason(tmp_path: Path):
    path = tmp_path / "edge.toml"
    path.write_text('[api]\nurl = "https://sudo.example.org"\n[audio]\nmic = "hw:1"\n')
    proc = await asyncio.create_subprocess_exec(
        EXE, env=os.environ | {"SUDO_EDGE_CONFIG": str(path)}, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20):
        _, stderr = await proc.communicate()
    assert proc.returncode == 78, "EX_CONFIG: the unit's RestartPreventExitStatus= stops a crash loop"
    assert "unknown key(s) in [audio]: ['mic']" in stderr.decode()


async def test_mute_without_a_running_daemon_says_so(tmp_path: Path, devices: AudioDevices):
    env = os.environ | {"SUDO_EDGE_CONFIG": str(config("https://sudo.example.org", tmp_path, devices))}
    proc = await asyncio.create_subprocess_exec(EXE, "mute", env=env, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, stderr = await proc.communicate()
    assert proc.returncode == 1
    assert f"sudo-edge is not running (no {tmp_path / 'control.sock'})" in stderr.decode()
