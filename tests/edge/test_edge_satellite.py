"""The satellite end to end: the stand-in sudo-api over HTTP on 127.0.0.1, the loopback LiveKit,
real ALSA through the file plugin, and sd_notify to a socket as systemd would read it.

Intervals are shortened through the settings only, so that the whole life of a device (pairing,
beats, outages, revocation, token renewals) passes in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from edge_support import AudioDevices, NotifyListener, Recording, speak, tone_power, until
from loopback_room import LoopbackServer
from standin_api import StandinApi

from sudo_api.devices import CODE_LENGTH
from sudo_edge.audio import earcon, tone
from sudo_edge.button import EV_KEY, EVENT
from sudo_edge.control import ControlError, ask
from sudo_edge.notify import Notifier
from sudo_edge.room import AGENT_GONE
from sudo_edge.satellite import Satellite
from sudo_edge.settings import (
    ApiSettings,
    AudioSettings,
    DeviceSettings,
    HeartbeatSettings,
    PairingSettings,
    ReconnectSettings,
    Settings,
    VoiceSettings,
)
from sudo_edge.state import MuteFlag, PairedDevice, TokenStore

JITTER = 0.2


@dataclass
class Rig:
    settings: Settings
    api: StandinApi
    livekit: LoopbackServer
    devices: AudioDevices
    notify: NotifyListener
    caplog: pytest.LogCaptureFixture

    @property
    def store(self) -> TokenStore:
        return TokenStore(self.settings.device.state_dir)

    def paired_before(self) -> str:
        """A device paired in an earlier life: its token is on disk and known to sudo-api."""
        token = "sd_dev_earlier-life-token"
        self.api.add_device(token)
        self.store.save(PairedDevice(token, "dev-1", self.api.family))
        return token

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Satellite]:
        satellite = Satellite(self.settings, room_factory=self.livekit.room, notifier=Notifier())
        task = asyncio.create_task(satellite.run())
        try:
            yield satellite
            assert not task.done(), f"the satellite ended: {task}"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        unexpected = [r.getMessage() for r in self.caplog.records if "unexpected error" in r.getMessage()]
        assert not unexpected, unexpected

    def statuses(self) -> list[str]:
        return self.notify.statuses()

    async def wait_status(self, text: str, within: float = 10.0) -> None:
        await self.notify.wait_for(
            lambda _: any(text in s for s in self.statuses()), f"STATUS {text!r}", within
        )

    def log(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if text in r.getMessage()]


@pytest.fixture
async def rig(
    tmp_path: Path, devices: AudioDevices, monkeypatch: pytest.MonkeyPatch, caplog
) -> AsyncIterator[Rig]:
    caplog.set_level(logging.INFO)
    api = StandinApi(heartbeat_sec=0.3)
    await api.start()
    notify = NotifyListener()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    settings = Settings(
        api=ApiSettings(url=api.url, timeout_sec=1.0),
        device=DeviceSettings(
            name="Kitchen Pi",
            state_dir=tmp_path / "state",
            control_socket=Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp")) / "control.sock",  # short
        ),
        pairing=PairingSettings(poll_sec=0.1, announce_every_sec=0),
        heartbeat=HeartbeatSettings(interval_sec=5.0, jitter=JITTER),
        reconnect=ReconnectSettings(min_sec=0.05, max_sec=0.4),
        voice=VoiceSettings(
            connect_timeout_sec=1.0, token_margin_sec=2.0, not_configured_retry_sec=0.3, wake="always"
        ),
        audio=AudioSettings(mic_device=devices.mic, speaker_device=devices.speaker, retry_sec=0.2),
    )
    yield Rig(settings, api, LoopbackServer(), devices, notify, caplog)
    notify.close()
    await api.stop()


# Pairing


async def test_first_start_pairs_says_the_code_and_keeps_the_token(rig: Rig):
    api = rig.api
    api.voice_configured = False
    async with rig.running():
        await api.wait_for(lambda: api.codes, "a pairing request")
        code = api.codes[0]
        assert len(code) == CODE_LENGTH
        assert next(iter(api.pairings.values())).name == "Kitchen Pi"
        await until(lambda: rig.log(f"pairing code {code}"), "the code in the log")
        await rig.wait_status(f"pairing: code {code}")
        assert rig.notify.messages[0].startswith("READY=1")
        # Spoken through the speaker: seconds of loud audio, not silence.
        await until(lambda: len(rig.devices.speaker_pcm()) > 2 * 16000 * 2, "the code spoken")
        spoken = np.frombuffer(rig.devices.speaker_pcm(), dtype=np.int16)
        assert np.abs(spoken).max() > 3000
        await api.wait_for(lambda: len(api.of("GET", "/v1/devices/pairing")) >= 3, "polls while pending")
        assert not rig.store.path.exists(), "nothing is stored before the code is typed"

        api.claim(code)  # a parent typed it: the device says whose it is to become, and a code
        record = next(iter(api.pairings.values()))
        await rig.wait_status(f"pairing with {api.family_name}: type {record.confirm_code} to confirm")
        assert rig.log(f"{api.family_name} typed the code")
        said = len(rig.devices.speaker_pcm())
        await until(lambda: len(rig.devices.speaker_pcm()) > said + 4 * 16000 * 2, "the confirmation spoken")
        assert not rig.store.path.exists() and not api.heartbeats, "nothing until the code is typed back"
        device_id = api.confirm(code, record.confirm_code)
        await api.wait_for(lambda: api.heartbeats, "a heartbeat")
        token = next(iter(api.pairings))
        assert api.heartbeats[0].token == token
        assert stat.S_IMODE(rig.store.path.stat().st_mode) == 0o600
        assert rig.store.load() == PairedDevice(token, device_id, api.family)

    # A restart (a new process, the same state directory) goes straight to heartbeats.
    beats = len(api.heartbeats)
    async with rig.running():
        await api.wait_for(lambda: len(api.heartbeats) > beats, "a heartbeat after the restart")
    assert len(api.of("POST", "/v1/devices/pairing")) == 1, "no second pairing"
    assert {c.token for c in api.heartbeats} == {token}


async def test_an_expired_code_is_replaced_by_a_new_one(rig: Rig):
    api = rig.api
    async with rig.running():
        await api.wait_for(lambda: api.codes, "a pairing request")
        first = api.codes[0]
        api.expire(first)
        await api.wait_for(lambda: len(api.codes) == 2, "a second code")
        second = api.codes[1]
        await rig.wait_status(f"pairing: code {second}")
        assert rig.log(f"pairing code {first} is expired")
        api.complete(second)
        await api.wait_for(lambda: api.heartbeats, "a heartbeat")


async def test_a_revoked_device_forgets_its_token_and_pairs_again(rig: Rig):
    api = rig.api
    old = rig.paired_before()
    async with rig.running():
        await api.wait_for(lambda: api.heartbeats, "a heartbeat")
        api.revoke(old)
        await api.wait_for(lambda: api.codes, "a new pairing request")
        assert api.of("POST", "/v1/devices/heartbeat", 401)
        await until(lambda: not rig.store.path.exists(), "the old token forgotten")
        api.complete(api.codes[0])
        await api.wait_for(lambda: api.heartbeats[-1].token != old, "a heartbeat with the new token")
        assert rig.store.load().device_token == api.heartbeats[-1].token


# Heartbeats and outages


async def test_heartbeats_keep_coming_at_the_servers_interval_with_jitter(rig: Rig):
    api = rig.api
    rig.paired_before()
    async with rig.running():
        await api.wait_for(lambda: len(api.heartbeats) >= 10, "ten heartbeats")
    times = [c.at for c in api.heartbeats[:10]]
    gaps = np.diff(times)
    # sudo-api's next_in (0.3 s) rules, not the configured 5 s; each wait is jittered by up to 20 %.
    assert gaps.min() >= 0.3 * (1 - JITTER) - 0.02, gaps
    assert gaps.max() <= 0.3 * (1 + JITTER) + 0.25, gaps
    assert gaps.max() - gaps.min() > 0.03, f"no jitter: {gaps}"


async def test_sudo_api_going_away_and_coming_back_is_survived(rig: Rig):
    api = rig.api
    rig.paired_before()
    async with rig.running():
        await api.wait_for(lambda: len(api.heartbeats) >= 2, "heartbeats")
        await api.stop()
        await rig.wait_status("sudo-api unreachable, retrying in")
        await until(lambda: len(rig.log("cannot reach sudo-api")) >= 3, "three failed attempts in the log")
        assert "retrying in" in rig.log("cannot reach sudo-api")[0]
        beats = len(api.heartbeats)
        await api.start()
        await api.wait_for(lambda: len(api.heartbeats) > beats + 1, "heartbeats again")
        await until(lambda: "unreachable" not in rig.notify.last_status(), "STATUS without the outage")
        assert rig.log("sudo-api is reachable again")


async def test_sudo_api_errors_and_garbage_are_retried(rig: Rig):
    from aiohttp import web

    api = rig.api
    rig.paired_before()
    answers = iter(
        [
            web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html"),
            web.json_response({"error": "database is locked"}, status=500),
            web.Response(status=200, text="not json"),
        ]
    )

    async def flaky(request: web.Request) -> web.StreamResponse:
        answer = next(answers, None)
        if answer is None:
            del api.override["POST /v1/devices/heartbeat"]
            return await api._heartbeat(request)
        return answer

    api.override["POST /v1/devices/heartbeat"] = flaky
    async with rig.running():
        await api.wait_for(
            lambda: not api.override and len(api.heartbeats) >= 2, "a heartbeat once sudo-api is well again"
        )
    assert rig.log("HTTP 502") and rig.log("database is locked") and rig.log("not JSON")


# Voice


async def test_voice_not_set_up_keeps_heartbeating_and_asks_again(rig: Rig):
    api = rig.api
    api.voice_configured = False
    rig.paired_before()
    async with rig.running():
        refused = lambda: api.of("POST", "/v1/voice/token", 503)  # noqa: E731
        await api.wait_for(lambda: len(refused()) >= 2, "refused tokens")
        beats = len(api.heartbeats)
        await api.wait_for(
            lambda: len(api.heartbeats) >= beats + 2 and len(refused()) >= 4,
            "heartbeats and token retries together",
        )
        assert not rig.livekit.joins
        await rig.wait_status("paired; voice is not set up on sudo-api, retrying in")
        assert len(rig.log("voice is not set up")) == 1, "said once in the log, not at every retry"
        api.voice_configured = True
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join once voice is set up")
        await rig.wait_status(f"connected to room_{api.family}")
        assert rig.livekit.joins[0].token == api.voice_tokens[0]["token"]


async def test_the_voice_token_is_renewed_before_it_expires(rig: Rig):
    api = rig.api
    api.voice_ttl_sec = 4.0  # renewed 2 s before expiry (voice.token_margin_sec)
    rig.paired_before()
    async with rig.running():
        await api.wait_for(lambda: len(api.voice_tokens) >= 3, "two renewals", within=15)
        tokens = api.voice_tokens
        for earlier, later in itertools.pairwise(tokens):
            assert later["issued"] < earlier["issued"] + api.voice_ttl_sec - 0.5, "renewed before expiry"
        assert len(rig.livekit.joins) == 1, "the room is kept across renewals"
        # sudo-api goes away: renewals are retried with backoff (not in a tight loop)...
        await api.stop()
        await until(lambda: rig.log("cannot renew the LiveKit token yet"), "a failed renewal", within=5)
        await asyncio.sleep(1.0)  # a window to count retries in
        assert 2 <= len(rig.log("cannot renew the LiveKit token yet")) <= 12
        # ...and when the room drops meanwhile, the renewed token still joins again.
        rig.livekit.drop()
        await rig.livekit.wait_for(lambda: len(rig.livekit.joins) == 2, "joined again")
        assert rig.livekit.joins[1].token == api.voice_tokens[-1]["token"]


async def test_livekit_down_is_retried_until_it_is_back(rig: Rig):
    rig.livekit.up = False
    rig.paired_before()
    async with rig.running():
        await rig.livekit.wait_for(lambda: len(rig.livekit.rooms) >= 3, "three attempts")
        await rig.wait_status("paired; LiveKit unreachable, retrying in")
        assert rig.log("connection refused; retrying in")
        rig.livekit.up = True
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        await rig.wait_status(f"connected to room_{rig.api.family}")
        rig.livekit.drop("the SFU restarted")
        await rig.livekit.wait_for(lambda: len(rig.livekit.joins) == 2, "joined again after the drop")
        assert rig.log("the SFU restarted")


async def test_the_agents_audio_plays_through_the_speaker(rig: Rig, recording: Recording):
    rig.paired_before()
    async with rig.running():
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        rig.livekit.say(recording.speech)
        await until(lambda: recording.speech in rig.devices.speaker_pcm(), "the agent's words in the speaker")


async def test_the_cue_plays_when_the_agent_starts_listening(rig: Rig):
    rig.paired_before()
    cue = tone(rig.settings.cue, 16000)
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        rig.livekit.set_state("thinking")
        rig.livekit.set_state("speaking")
        rig.livekit.set_state("listening")
        await until(lambda: len(rig.devices.speaker_pcm()) >= len(cue), "the cue")
        await satellite.speaker.drained()
        assert rig.devices.speaker_pcm() == cue, "one cue, for listening only"
        rig.livekit.set_state("thinking")
        rig.livekit.set_state("listening")
        await until(lambda: len(rig.devices.speaker_pcm()) >= 2 * len(cue), "the second cue")
    out = rig.devices.speaker_pcm()
    assert len(out) == 2 * len(cue)
    assert tone_power(out, rig.settings.cue.frequency_hz) > 0.9


async def test_speech_at_the_microphone_reaches_the_agent_and_silence_does_not(
    rig: Rig, recording: Recording
):
    rig.devices.prepare_mic(recording.pcm)
    rig.paired_before()
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        await until(
            lambda: satellite.mic_stats.read * 0.02 > recording.duration + 0.5, "the recording captured"
        )
    sent = b"".join(rig.livekit.received)
    start = recording.pcm.find(sent[:640])
    assert start >= 0 and recording.pcm[start : start + len(sent)] == sent, "one run of the captured audio"
    assert start / 32000 <= recording.speech_start <= recording.speech_end <= (start + len(sent)) / 32000
    assert len(sent) < 0.75 * len(recording.pcm), "the quiet room before and after is not sent"


async def test_a_missing_microphone_is_retried_until_it_appears(rig: Rig, recording: Recording):
    rig.devices.mic_file.unlink()  # the file plugin can't open its recording: like an unplugged mic
    rig.paired_before()
    async with rig.running():
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        name = f"cannot open ALSA capture device {rig.devices.mic!r}"
        await until(lambda: len(rig.log(name)) >= 2, "two attempts to open the microphone")
        assert "trying again in 0.2 s" in rig.log(name)[0]
        await rig.wait_status("microphone unavailable")
        rig.devices.prepare_mic(recording.pcm)
        await rig.livekit.wait_for(lambda: len(rig.livekit.received) > 50, "speech from the microphone")
        await until(lambda: "microphone" not in rig.notify.last_status(), "STATUS without the microphone")


async def test_a_device_nobody_pairs_stops_offering_codes(rig: Rig):
    """An unpaired (or revoked) device left on is not a pairing open to guessers for ever."""
    rig.settings = dataclasses.replace(
        rig.settings, pairing=dataclasses.replace(rig.settings.pairing, max_codes=2)
    )
    api = rig.api
    async with rig.running():
        for n in (1, 2):
            await api.wait_for(lambda n=n: len(api.codes) == n, f"code {n}")
            api.expire(api.codes[-1])
        await rig.wait_status("pairing: stopped after 2 unused codes; restart sudo-edge to pair")
        await asyncio.sleep(0.5)  # polls every 0.1 s: a third code would have been asked for
        assert len(api.codes) == 2
    async with rig.running():  # restarted: codes again
        await api.wait_for(lambda: len(api.codes) == 3, "a code after the restart")


# The wake word and the mute


def open_files() -> set[str]:
    """What this process holds open: the ALSA file plugin's microphone holds its recording."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.add(os.readlink(f"/proc/self/fd/{fd}"))
    return held


def with_voice(rig: Rig, **changes) -> None:
    rig.settings = dataclasses.replace(rig.settings, voice=dataclasses.replace(rig.settings.voice, **changes))


async def test_only_what_follows_the_wake_word_reaches_the_agent(rig: Rig):
    """A question without the wake word, then "okay nabu" and a question, through real ALSA: the
    room gets the second question and nothing of the first; the rising earcon plays."""
    rng = np.random.default_rng(7)
    parts = [bytes(16000), speak("What is the weather like in Paris tomorrow?"), bytes(48000)]
    parts += [speak("okay nabu"), bytes(8000), speak("And in London?"), bytes(64000)]
    samples = np.frombuffer(b"".join(parts), dtype=np.int16).astype(np.int32)
    noisy = np.clip(samples + rng.normal(0, 30, samples.size).astype(np.int32), -32768, 32767)
    pcm = noisy.astype(np.int16).tobytes()
    offsets = list(itertools.accumulate(len(p) for p in parts))
    first_question_end, wake_start, second_start, second_end = offsets[1], offsets[2], offsets[4], offsets[5]
    rig.devices.prepare_mic(pcm)
    with_voice(rig, wake="wakeword", follow_up_sec=3.0)
    rig.paired_before()
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        await until(lambda: satellite.mic_stats.read * 640 > len(pcm) + 16000, "the recording captured", 30)
        assert satellite.listening is not None and satellite.listening.wakes == 1
    sent = b"".join(rig.livekit.received)
    start = pcm.find(sent[:640])
    assert start >= 0 and pcm[start : start + len(sent)] == sent, "one run of the captured audio"
    assert first_question_end < wake_start <= start, "nothing of the first question, nor the word"
    assert start <= second_start and second_end <= start + len(sent), "the whole second question"
    assert rig.devices.speaker_pcm() == earcon(rig.settings.cue, 16000, rising=True)
    assert rig.log("wake word heard")


async def test_the_agent_leaving_the_room_puts_the_wake_word_back_on_guard(rig: Rig):
    """An agent gone in the middle of its answer (the bridge crashed) leaves no window open: what
    is said next at home goes nowhere without the wake word, even once a new agent listens."""
    with_voice(rig, wake="wakeword", follow_up_sec=5.0)
    rig.paired_before()
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        listening = satellite.listening
        assert listening is not None
        rig.livekit.set_state("speaking")
        await until(lambda: listening.awake, "open while the agent speaks", 5)
        rig.livekit.set_state(AGENT_GONE)
        await until(lambda: not listening.awake, "asleep once the agent left", 5)
        rig.livekit.set_state("listening")  # the next agent
        await until(lambda: rig.devices.speaker_pcm(), "the new agent's cue", 5)
        assert not listening.awake


async def test_a_room_without_an_agent_is_left_long_enough_for_it_to_close(rig: Rig):
    """No agent comes: the device leaves and joins again soon, since its token has LiveKit close
    the room 2 s after it left; from the second try it stays out longer than the server's own
    departure timeout, in case an agent's late join made the room again (it would never close)."""
    with_voice(rig, agent_wait_sec=0.3, room_departure_sec=1.0)
    rig.paired_before()
    joined_at: list[float] = []
    async with rig.running():
        deadline = time.monotonic() + 20
        while len(joined_at) < 3 and time.monotonic() < deadline:
            if len(rig.livekit.joins) > len(joined_at):
                joined_at.append(time.monotonic())
            await asyncio.sleep(0.01)
    assert len(joined_at) == 3, joined_at
    first, second = joined_at[1] - joined_at[0], joined_at[2] - joined_at[1]
    assert first < 1.0 + 2, f"the first try comes back after agent_wait_sec: {first:.2f} s"
    assert second >= 1.0 + 2, f"the second stays out past the departure timeout: {second:.2f} s"
    assert rig.log("no agent in the room")


async def test_a_mute_closes_the_microphone_and_holds_across_restarts(rig: Rig, recording: Recording):
    """Muted, the capture device is closed and nothing is read or sent; unmuted, speech goes
    again. The mute is said in every heartbeat, at once when it changes, and survives a restart."""
    rig.api.heartbeat_sec = 60.0  # a beat at start, then only those a change brings forward
    rig.devices.prepare_mic(recording.pcm)
    rig.paired_before()
    MuteFlag(rig.settings.device.state_dir).set(True)  # muted in an earlier life
    control = rig.settings.device.control_socket
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        await rig.api.wait_for(lambda: rig.api.muted, "a heartbeat")
        await asyncio.sleep(1.0)
        assert satellite.mic_stats.read == 0 and rig.livekit.received == []
        assert str(rig.devices.mic_file) not in open_files()
        assert rig.api.muted == [True]
        assert (await ask(control, "status"))["muted"] is True
        await rig.wait_status("muted")

        assert (await ask(control, "unmute"))["muted"] is False
        await until(lambda: str(rig.devices.mic_file) in open_files(), "the microphone opened")
        await rig.livekit.wait_for(lambda: len(rig.livekit.received) > 50, "speech from the microphone")
        await rig.api.wait_for(lambda: rig.api.muted == [True, False], "a heartbeat saying unmuted", 2)
        assert rig.devices.speaker_pcm() == earcon(rig.settings.cue, 16000, rising=True)

        assert (await ask(control, "mute"))["muted"] is True
        await rig.api.wait_for(lambda: rig.api.muted == [True, False, True], "a heartbeat saying muted", 2)
        await until(lambda: str(rig.devices.mic_file) not in open_files(), "the microphone closed")
        read, received = satellite.mic_stats.read, len(rig.livekit.received)
        await asyncio.sleep(0.5)
        assert (satellite.mic_stats.read, len(rig.livekit.received)) == (read, received)
        await until(
            lambda: rig.devices.speaker_pcm().endswith(earcon(rig.settings.cue, 16000, rising=False)),
            "the mute earcon",
        )
    assert MuteFlag(rig.settings.device.state_dir).get(), "kept for the next start"
    async with rig.running() as satellite:
        await rig.livekit.wait_for(lambda: len(rig.livekit.joins) == 2, "joined again")
        await asyncio.sleep(0.5)
        assert satellite.mic_stats.read == 0 and str(rig.devices.mic_file) not in open_files()


async def test_the_control_socket_refuses_what_it_does_not_know(rig: Rig):
    rig.paired_before()
    async with rig.running():
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        with pytest.raises(ControlError, match="unknown command 'reboot': one of mute, unmute, status"):
            await ask(rig.settings.device.control_socket, "reboot")
        assert stat.S_IMODE(os.stat(rig.settings.device.control_socket).st_mode) == 0o600
    assert not rig.settings.device.control_socket.exists(), "removed at stop"
    with pytest.raises(ControlError, match="sudo-edge is not running"):
        await ask(rig.settings.device.control_socket, "status")


async def test_the_mute_button_toggles_the_mute(rig: Rig, tmp_path: Path):
    """The kernel's input events, as gpio-keys gives a button's, through a FIFO standing in for
    /dev/input/eventN: a press of the configured key mutes, the next unmutes; other keys and
    releases do nothing."""
    button = tmp_path / "event0"
    os.mkfifo(button)
    writer = os.open(button, os.O_RDWR)  # held open: the device stays plugged in
    rig.settings = dataclasses.replace(
        rig.settings, device=dataclasses.replace(rig.settings.device, mute_button=button, mute_key=248)
    )
    rig.paired_before()

    def key(code: int, value: int) -> None:
        os.write(writer, EVENT.pack(0, 0, EV_KEY, code, value) + EVENT.pack(0, 0, 0, 0, 0))  # + SYN

    try:
        async with rig.running() as satellite:
            await until(lambda: rig.log("mute button: key 248"), "the button opened")
            key(30, 1)  # KEY_A
            key(248, 0)  # a release
            await asyncio.sleep(0.3)
            assert not satellite.muted
            key(248, 1)
            await until(lambda: satellite.muted, "muted by the button")
            key(248, 0)
            key(248, 1)
            await until(lambda: not satellite.muted, "unmuted by the next press")
    finally:
        os.close(writer)


async def test_a_missing_mute_button_is_waited_for(rig: Rig, tmp_path: Path):
    rig.settings = dataclasses.replace(
        rig.settings, device=dataclasses.replace(rig.settings.device, mute_button=tmp_path / "event9")
    )
    rig.paired_before()
    async with rig.running():
        await until(lambda: len(rig.log("cannot read the mute button")) >= 2, "two attempts")
        assert "trying again in 0.2 s" in rig.log("cannot read the mute button")[0]
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "the room joined all the same")


async def test_a_mute_while_a_heartbeat_is_on_its_way_is_told_by_the_next(rig: Rig):
    rig.api.heartbeat_sec = 60.0
    arrived = asyncio.Event()
    answer = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        rig.api.muted.append((await request.json())["muted"])
        arrived.set()
        await answer.wait()
        return web.json_response({"next_in": 60.0})

    rig.api.override["POST /v1/devices/heartbeat"] = slow
    rig.paired_before()
    async with rig.running():
        await asyncio.wait_for(arrived.wait(), 10)
        assert (await ask(rig.settings.device.control_socket, "mute"))["muted"] is True
        del rig.api.override["POST /v1/devices/heartbeat"]
        answer.set()  # the beat that said "not muted" is answered only now
        await rig.api.wait_for(lambda: rig.api.muted == [False, True], "the next beat, at once", 2)


async def test_without_a_control_socket_the_device_still_works(rig: Rig):
    """Run by hand as a user who cannot create /run/sudo-edge, say."""
    rig.settings = dataclasses.replace(
        rig.settings,
        device=dataclasses.replace(rig.settings.device, control_socket=Path("/proc/sudo-edge/control.sock")),
    )
    rig.paired_before()
    async with rig.running():
        await rig.livekit.wait_for(lambda: rig.livekit.joins, "a join")
        assert rig.log("no control socket (")
