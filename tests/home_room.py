"""A family's home device and the voice bridge in one LiveKit room, for the room tests and the bench.

Real parts throughout: `sudo-edge` (the daemon, with its real ALSA through the `file` plugin)
runs in a network namespace of its own, joined to the host by a veth pair, so that a test can
cut its network; `sudo-voice-bridge` runs on the host against the real sudo-api and the
family's real Hermes container, with the offline speech engines; the LiveKit server between
them is tests/livekit_server.py, on the host's end of the veth. The edge reaches sudo-api
through a TCP relay on that address (sudo-api listens on 127.0.0.1, which a namespace has
its own of).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from livekit_server import LiveKitServer, Participant
from ports import free_port
from stack import BIN, Stack
from voice_audio import in_room_noise, silence, spoken

from sudo_edge.vad import level_dbfs

RATE = 16000
EDGE = Path(sys.executable).with_name("sudo-edge")
_namespaces = itertools.count()
AGENT_WAIT_SEC = 10.0
"""How long the device waits for a missing agent before it says so and joins again."""
LOUD_DBFS = -40.0
"""A 20 ms stretch of the speaker file above this is the agent speaking (its silence is zeros)."""


def asked(question: str) -> tuple[bytes, float]:
    """The wake word, a pause (for the earcon), the question, as the family says it near the
    device, in a quiet room's noise; and where the question ends in it (seconds)."""
    pcm = silence(0.5) + spoken("okay nabu", voice="en-us") + silence(1.0) + spoken(question)
    return in_room_noise(pcm + silence(1.5)), len(pcm) / 2 / RATE


def unused_room_subnet(start: int) -> int:
    """The third byte of a 10.215.x.0/30 for a namespace, from 64 to 127 beginning at `start`,
    that no interface of the host holds (another worker's room, or one a killed run left)."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True)
    taken = {int(m) for m in re.findall(r"inet 10\.215\.(\d+)\.", shown.stdout)}
    for step in range(64):
        subnet = 64 + (start + step) % 64
        if subnet not in taken:
            return subnet
    raise RuntimeError("every 10.215.64-127 subnet is taken: leftover sudo-room namespaces? (ip netns)")


class Namespace:
    """A network namespace with a veth pair to the host: `host_ip` on the host, `ip` inside."""

    def __init__(self, index: int) -> None:
        self.name = f"sudo-room-{os.getpid()}-{index}"
        self.host_side, self.inside = f"srh{os.getpid() % 10000}{index}", "eth0"
        subnet = unused_room_subnet(os.getpid() + index)
        self.host_ip, self.ip = f"10.215.{subnet}.1", f"10.215.{subnet}.2"

    def create(self) -> None:
        peer = f"{self.host_side}p"
        for argv in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_side, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", peer, "netns", self.name],
            ["ip", "-n", self.name, "link", "set", peer, "name", self.inside],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_side],
            ["ip", "link", "set", self.host_side, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{self.ip}/30", "dev", self.inside],
            ["ip", "-n", self.name, "link", "set", self.inside, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)

    def cut(self) -> None:
        """The device's network goes: its only link is down (as a pulled cable or a dead Wi-Fi)."""
        subprocess.run(["ip", "-n", self.name, "link", "set", self.inside, "down"], check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "-n", self.name, "link", "set", self.inside, "up"], check=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)  # takes the veth along

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]


async def relay(host: str, target: tuple[str, int]) -> asyncio.Server:
    """A TCP relay from `host` (a free port) to `target`."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(serve, host, 0)


@dataclass
class Edge:
    """sudo-edge in its namespace: its config, files and process."""

    root: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def mic_file(self) -> Path:
        return self.root / "mic.raw"

    @property
    def speaker_file(self) -> Path:
        return self.root / "speaker.wav"

    @property
    def log_file(self) -> Path:
        return self.root / "edge.log"

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "SUDO_EDGE_CONFIG": str(self.root / "edge.toml"),
            "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.root / 'asoundrc'}",
        }

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def speaker_pcm(self) -> bytes:
        """What the speaker played so far (after the WAV header)."""
        data = self.speaker_file.read_bytes() if self.speaker_file.exists() else b""
        return data[44:]

    async def command(self, *args: str) -> str:
        """`sudo-edge mute|unmute|status`, over the daemon's control socket."""
        proc = await asyncio.create_subprocess_exec(
            EDGE, *args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()


class HomeRoom:
    """The room of one paired device of a family, with the device and the bridge in it."""

    def __init__(self, api: Stack, root: Path, *, wake: str = "wakeword") -> None:
        self.api = api
        self.root = root
        self.wake = wake
        self.ns = Namespace(next(_namespaces))
        self.livekit: LiveKitServer | None = None
        self.bridge: subprocess.Popen | None = None
        self.edge = Edge(root / "edge")
        self.room_name = ""
        self._relay: asyncio.Server | None = None
        self._said = 0
        self._said_at = 0.0

    async def start(self, user_id: str, device_id: str, device_token: str) -> None:
        self.room_name = f"room_{user_id}_{device_id}"
        self.ns.create()
        key, secret = f"APIroom{secrets.token_hex(3)}", secrets.token_hex(32)
        self.livekit = LiveKitServer(key, secret, media_host=self.ns.host_ip)
        url = await self.livekit.start(host=self.ns.host_ip)
        for name, value in (("url", url), ("api_key", key), ("api_secret", secret)):
            await self.api.db.aio(self.api.db.set_setting, f"livekit.{name}", value)
        api_host, _, api_port = self.api.settings.api.listen.rpartition(":")
        self._relay = await relay(self.ns.host_ip, (api_host, int(api_port)))
        self.start_bridge()
        await asyncio.wait_for(self.livekit.registered.wait(), 90)
        self._write_edge_files(device_id, device_token, user_id)
        await self.start_edge()

    def start_bridge(self) -> None:
        env = self.api.env | {
            "SUDO_VOICE_API_URL": self.api.service_url,
            "SUDO_VOICE_HTTP": f"127.0.0.1:{free_port()}",
            "SUDO_VOICE_METRICS": "",
            "SUDO_VOICE_STT": "pocketsphinx",
            "SUDO_VOICE_TTS": "espeak",
            "SUDO_VOICE_SLOW_REPLY_SEC": "8",
        }
        log = (self.root / "bridge.log").open("ab")
        self.bridge = subprocess.Popen([str(BIN / "sudo-voice-bridge")], env=env, stdout=log, stderr=log)

    def kill_bridge(self) -> None:
        assert self.bridge is not None
        self.bridge.kill()
        self.bridge.wait()

    def _write_edge_files(self, device_id: str, device_token: str, user_id: str) -> None:
        root = self.edge.root
        (root / "state").mkdir(parents=True)
        (root / "state" / "device.json").write_text(
            json.dumps({"device_token": device_token, "device_id": device_id, "user_id": user_id})
        )
        self.edge.mic_file.write_bytes(b"")
        mic = f'type file slave.pcm "null" file "/dev/null" infile "{self.edge.mic_file}" format "raw"'
        speaker = f'type file slave.pcm "null" file "{self.edge.speaker_file}" format "wav"'
        (root / "asoundrc").write_text(f"pcm.mic {{ {mic} }}\npcm.speaker {{ {speaker} }}\n")
        assert self._relay is not None
        port = self._relay.sockets[0].getsockname()[1]
        (root / "edge.toml").write_text(
            f"""
[api]
url = "http://{self.ns.host_ip}:{port}"
timeout_sec = 5.0

[device]
name = "Kitchen"
state_dir = "{root / "state"}"
control_socket = "{root / "control.sock"}"
log_level = "DEBUG"

[reconnect]
min_sec = 0.5
max_sec = 2.0

[voice]
connect_timeout_sec = 10.0
wake = "{self.wake}"
agent_wait_sec = {AGENT_WAIT_SEC}

[audio]
mic_device = "mic"
speaker_device = "speaker"

[vad]
# The file microphone hears nothing of the speaker: no echo to learn.
echo_coupling_db = -60.0

[cue]
enabled = false
"""
        )

    async def start_edge(self) -> None:
        log = self.edge.log_file.open("ab")
        self.edge.proc = await asyncio.create_subprocess_exec(
            *self.ns.argv(str(EDGE)), env=self.edge.env, stdout=log, stderr=log
        )

    # What the room holds

    def participants(self) -> list[Participant]:
        assert self.livekit is not None
        room = self.livekit.rooms.get(self.room_name)
        return list(room.participants.values()) if room else []

    def agent(self) -> Participant | None:
        return next((p for p in self.participants() if p.is_agent()), None)

    def device(self) -> Participant | None:
        return next((p for p in self.participants() if not p.is_agent()), None)

    def ready(self) -> bool:
        """The device publishes its microphone, the agent listens and hears it, and the device
        hears the agent."""
        agent, device = self.agent(), self.device()
        return bool(
            agent
            and device
            and agent.info.attributes.get("lk.agent.state") == "listening"
            and device.published
            and agent.published
            and all(sid in agent.senders for sid in device.published)
            and all(sid in device.senders for sid in agent.published)
        )

    async def until(self, predicate, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within:g} s waiting for {what}\n{self.logs()}")
            await asyncio.sleep(0.05)

    def agent_sounded(self, after: float) -> list[float]:
        """When the server received loud audio from the agent after `after` (time.monotonic())."""
        agent = self.agent()
        tracks = agent.published.values() if agent else ()
        return sorted(t for track in tracks for t, level in track.heard if t > after and level > LOUD_DBFS)

    def logs(self) -> str:
        """The edge's and the bridge's logs, and the room as the server sees it, for a failure."""
        bridge = (self.root / "bridge.log").read_text(errors="replace")
        room = []
        for p in self.participants():
            tracks = {
                sid: (
                    sum(1 for t, _ in track.heard if t > self._said_at),
                    sum(1 for t, level in track.heard if t > self._said_at and level > LOUD_DBFS),
                )
                for sid, track in p.published.items()
            }
            sent = {
                sid: sum(1 for t in sender.track.sent if t > self._said_at)
                for sid, sender in p.senders.items()
            }
            room.append(
                f"{p.identity}: frames (all, loud) received since the last words said {tracks}, "
                f"frames sent to it since {sent}"
            )
        edge = "\n".join(line for line in self.edge.log().splitlines() if "no callback attached" not in line)
        workers = [w.registration.agent_name for w in self.livekit.workers]
        room.append(f"workers registered: {workers}; the server's last events:")
        room.extend(f"  {event}" for event in self.livekit.events[-20:])
        parts = ("--- room ---", *room, "--- edge ---", edge[-4000:], "--- bridge ---", bridge[-12000:])
        return "\n".join(parts)

    # Talking to it

    async def say(self, pcm: bytes, speech_end: float) -> float:
        """The device's microphone hears `pcm` from now on (its capture device is opened again on
        it: a mute and an unmute); when it hears the end of the speech, `speech_end` seconds
        into `pcm` (time.monotonic(), within the few milliseconds the device takes to open)."""
        self.edge.mic_file.write_bytes(pcm)
        self._said += 1
        self._said_at = time.monotonic()
        await self.edge.command("mute")
        await self.edge.command("unmute")
        # Once heard, the recording goes: a microphone opened again (the room joined again) hears
        # the room's silence, not the same words twice.
        said = self._said
        asyncio.get_running_loop().call_later(len(pcm) / 2 / RATE + 1.0, self._forget_recording, said)
        return time.monotonic() + speech_end

    def _forget_recording(self, said: int) -> None:
        if said == self._said:
            self.edge.mic_file.write_bytes(b"")

    async def ask(self, question: str) -> tuple[bytes, float]:
        """Ask at the device, after the wake word: the answer its speaker played, and the time
        from the end of the question to its first sound."""
        start = len(self.edge.speaker_pcm())
        ended = await self.say(*asked(question))
        first_audio, offset = await self.first_audio_after(start, 60)
        return await self.quiet_after(offset, 1.5, 60), first_audio - ended

    async def first_audio_after(self, start: int, within: float) -> tuple[float, int]:
        """Wait for loud audio in the speaker file past byte `start`: (when seen, its offset)."""
        deadline = time.monotonic() + within
        chunk = RATE // 50 * 2
        while time.monotonic() < deadline:
            pcm = self.edge.speaker_pcm()
            for offset in range(start - start % chunk, len(pcm) - chunk + 1, chunk):
                if level_dbfs(pcm[offset : offset + chunk]) > LOUD_DBFS:
                    return time.monotonic(), offset
            await asyncio.sleep(0.01)
        raise AssertionError(f"no audio from the speaker within {within:g} s\n{self.logs()}")

    async def quiet_after(self, start: int, quiet_sec: float, within: float) -> bytes:
        """The speaker's audio from `start` on, once nothing loud was added to it for `quiet_sec`
        (its file grows with silence while the agent's track plays, not at all once it is gone)."""
        deadline = time.monotonic() + within
        chunk = RATE // 50 * 2
        last_loud, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            pcm = self.edge.speaker_pcm()[start:]
            loud = [
                i for i in range(0, len(pcm) - chunk + 1, chunk) if level_dbfs(pcm[i : i + chunk]) > LOUD_DBFS
            ]
            if loud and loud[-1] != last_loud:
                last_loud, since = loud[-1], time.monotonic()
            elif loud and time.monotonic() - since >= quiet_sec:
                return pcm[: last_loud + chunk]
            await asyncio.sleep(0.1)
        raise AssertionError(f"the speaker did not fall silent within {within:g} s\n{self.logs()}")

    async def stop(self) -> None:
        if self.edge.proc is not None and self.edge.proc.returncode is None:
            self.edge.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.edge.proc.wait(), 15)
            if self.edge.proc.returncode is None:
                self.edge.proc.kill()
                await self.edge.proc.wait()
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.bridge.wait, 30)
            except subprocess.TimeoutExpired:
                self.bridge.kill()
        if self.livekit is not None:
            await self.livekit.stop()
        if self._relay is not None:
            self._relay.close()
        self.ns.delete()
        self.api.db.execute("DELETE FROM settings WHERE key LIKE 'livekit.%'")


@contextlib.asynccontextmanager
async def home_room(
    api: Stack, root: Path, user_id: str, device_id: str, token: str, **kw
) -> AsyncIterator[HomeRoom]:
    room = HomeRoom(api, root, **kw)
    try:
        await room.start(user_id, device_id, token)
        yield room
    finally:
        await room.stop()
