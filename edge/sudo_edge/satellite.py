"""The behaviour of the device: pair, heartbeat, join its room, microphone and speaker.

    no token -> pairing: ask for a code, say it, poll until a family types it; then say the
                family's name and a confirmation code, poll until it is typed back
                -> token saved (0600)
    token -> heartbeats every ~30 s, jittered          } side by side; a 401 on either means
          -> voice: LiveKit token, join the room       } the device was revoked: pair again
             mic -> wake word -> VAD -> room; room (agent only) -> speaker; a cue when the
             agent listens; the token renewed before it expires; a lost room joined again
    muted (`sudo-edge mute`, the button; kept across restarts) -> the microphone closed

Every failure of the network, sudo-api or LiveKit gives a log line, a STATUS saying what is
awaited, and a retry after an exponential backoff with jitter; a failing sound device is opened
again after `audio.retry_sec`. Only a bad configuration or state directory ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Coroutine
from typing import Any, NoReturn

from .api import (
    ApiError,
    Pairing,
    PairingState,
    Refused,
    SudoApi,
    Unauthorized,
    Unreachable,
    VoiceNotConfigured,
    VoiceToken,
)
from .audio import (
    AudioDeviceError,
    Microphone,
    PumpStats,
    Speaker,
    SpeechError,
    earcon,
    synthesize,
    tone,
)
from .button import watch_button
from .control import ControlServer
from .notify import Notifier
from .room import AGENT_GONE, LiveKitRoom, Room, RoomError, RoomFactory
from .settings import ReconnectSettings, Settings
from .state import MuteFlag, PairedDevice, TokenStore
from .vad import SpeechGate
from .wake import Listening, WakeWord

log = logging.getLogger("sudo-edge")

AGENT_AWAY = "Sorry, the assistant is not answering right now. I will keep trying."
"""What the device says when its agent is gone, once per outage."""


class Unpaired(Exception):
    """sudo-api does not (or no longer) know this device's token."""


class AgentAway(Exception):
    """No agent in the room for `voice.agent_wait_sec`: leave it, and join again later."""


class Backoff:
    """Exponential backoff with jitter: min, 2 min, 4 min... up to max, each shortened at random."""

    def __init__(self, settings: ReconnectSettings) -> None:
        self.settings = settings
        self.failures = 0

    def next(self) -> float:
        s = self.settings
        delay = min(s.max_sec, s.min_sec * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay * (1 - random.uniform(0, s.jitter))

    def reset(self) -> None:
        self.failures = 0


def _seconds(delay: float) -> str:
    return f"{delay:.0f} s" if delay >= 1.5 else f"{delay:.2g} s"


def confirmation(state: PairingState) -> str:
    """What the device says once a family typed its code: who, and the code to type back. The
    family near the device hears whose it is about to become; a stranger who guessed the
    code cannot hear the confirmation code."""
    spelled = ", ".join(state.confirm_code)
    return (
        f"{state.family_name} is pairing this device. If that is your family, type this code on the "
        f"page: {spelled}. Again: {spelled}. If it is not, do nothing."
    )


class Satellite:
    def __init__(
        self,
        settings: Settings,
        *,
        room_factory: RoomFactory,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.room_factory = room_factory
        self.notifier = notifier or Notifier()
        self.api = SudoApi(settings.api)
        self.store = TokenStore(settings.device.state_dir)
        self.speaker = Speaker(settings.audio)
        self.mic_stats = PumpStats()
        rate = settings.audio.sample_rate
        self._cue = tone(settings.cue, rate)
        self._rising, self._falling = (earcon(settings.cue, rate, rising=r) for r in (True, False))
        self.listening = (
            Listening(WakeWord(settings.voice.wake_word), settings.voice.follow_up_sec, self._woken)
            if settings.voice.wake == "wakeword"
            else None
        )
        self.mute = MuteFlag(settings.device.state_dir)
        self.muted = False
        self._mute_changed = asyncio.Event()
        self._voice: VoiceToken | None = None
        self._aways = 0
        """Rooms left in a row for want of an agent."""
        self._status: dict[str, str] = {}

    # Status: one line for systemd, made of the parts that currently apply

    def _set_status(self, part: str, text: str | None) -> None:
        if text is None:
            self._status.pop(part, None)
        else:
            self._status[part] = text
        text = "; ".join(self._status[p] for p in ("state", "api", "mic") if p in self._status)
        if text:
            self.notifier.status(text)

    async def _retry_later(self, backoff: Backoff, exc: Exception, part: str = "api") -> None:
        delay = backoff.next()
        what = "sudo-api unreachable" if isinstance(exc, Unreachable) else "sudo-api refused a request"
        log.warning("%s; retrying in %s", exc, _seconds(delay))
        self._set_status(part, f"{what}, retrying in {_seconds(delay)}")
        await asyncio.sleep(delay)

    # The whole life

    async def run(self) -> None:
        """Run until cancelled; READY is sent at once (pairing may take days)."""
        self.store.check()
        self.muted = self.mute.get()
        if self.muted:
            log.info("muted (since before this start): the microphone stays closed")
            self._set_status("mic", "muted")
        control = ControlServer(self.settings.device.control_socket, self._control)
        try:
            await control.start()
        except OSError as exc:  # run by hand as a user, say: the device works, unmutable by command
            log.warning("no control socket (%s): `sudo-edge mute` cannot reach this daemon", exc)
        self.notifier.ready("starting")
        watchdog = asyncio.create_task(self.notifier.watchdog(), name="watchdog")
        button = self._watch_button()
        self.speaker.start()
        restart = Backoff(self.settings.reconnect)
        try:
            while True:
                try:
                    await self._session()
                    restart.reset()
                except Exception:  # a bug must not become a crash loop that forgets the backoff
                    delay = restart.next()
                    log.exception("unexpected error; starting over in %s", _seconds(delay))
                    await asyncio.sleep(delay)
        finally:
            self.notifier.stopping()
            watchdog.cancel()
            if button is not None:
                button.cancel()
            await control.close()
            await self.api.close()
            await self.speaker.close()

    async def _session(self) -> None:
        device = self.store.load()
        if device is None:
            device = await self._pair()
        else:
            log.info(
                "paired device %s of family %s; sudo-api at %s",
                device.device_id,
                device.user_id,
                self.api.base,
            )
        try:
            await _race(self._heartbeats(device.device_token), self._voice_loop(device.device_token))
        except Unpaired as exc:
            log.warning("%s: forgetting the token and pairing again", exc)
            self.store.forget()
            self._voice = None

    # Pairing

    async def _pair(self) -> PairedDevice:
        backoff = Backoff(self.settings.reconnect)
        name = self.settings.device.display_name
        limit, offered = self.settings.pairing.max_codes, 0
        while True:
            if limit and offered >= limit:
                await self._stop_offering(limit)
            try:
                pairing = await self.api.start_pairing(name)
            except (Unreachable, Refused) as exc:
                await self._retry_later(backoff, exc)
                continue
            offered += 1
            backoff.reset()
            self._set_status("api", None)
            log.info(
                "pairing code %s: enter it on /integrations at %s (valid for %.0f min)",
                pairing.code,
                self.api.base,
                pairing.expires_in / 60,
            )
            self._set_status("state", f"pairing: code {pairing.code}, enter it on /integrations")
            device = await self._wait_for_code(pairing, backoff)
            if device is not None:
                self.store.save(device)
                log.info(
                    "paired: device %s of family %s; token saved in %s",
                    device.device_id,
                    device.user_id,
                    self.store.path,
                )
                self._set_status("state", "paired")
                return device

    async def _stop_offering(self, codes: int) -> NoReturn:
        """No more codes until sudo-edge restarts: nobody is pairing this device."""
        log.warning("%d pairing codes went unused: no more until sudo-edge restarts", codes)
        self._set_status("state", f"pairing: stopped after {codes} unused codes; restart sudo-edge to pair")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _wait_for_code(self, pairing: Pairing, backoff: Backoff) -> PairedDevice | None:
        spelled = ", ".join(pairing.code)
        text = f"Your Sudo pairing code is: {spelled}. Again: {spelled}."
        announcer = asyncio.create_task(self._announce(text), name="announce-code")
        confirming = False
        try:
            while True:
                await asyncio.sleep(self.settings.pairing.poll_sec)
                try:
                    state = await self.api.pairing_state(pairing.device_token)
                except Unauthorized:
                    log.warning(
                        "sudo-api no longer knows pairing %s: asking for a new code", pairing.pairing_id
                    )
                    return None
                except (Unreachable, Refused) as exc:
                    await self._retry_later(backoff, exc)
                    continue
                backoff.reset()
                self._set_status("api", None)
                if state.state == "paired":
                    return PairedDevice(pairing.device_token, state.device_id, state.user_id)
                if state.state == "confirming" and not confirming:
                    confirming = True
                    announcer.cancel()
                    announcer = asyncio.create_task(self._announce(confirmation(state)), name="announce-ok")
                    log.info(
                        "%s typed the code: to pair with them, type %s on /integrations",
                        state.family_name,
                        state.confirm_code,
                    )
                    self._set_status(
                        "state", f"pairing with {state.family_name}: type {state.confirm_code} to confirm"
                    )
                elif state.state not in ("pending", "confirming"):
                    log.info("pairing code %s is %s: asking for a new one", pairing.code, state.state)
                    return None
        finally:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer

    async def _announce(self, text: str) -> None:
        """Say a code through the speaker, again every `announce_every_sec`."""
        s = self.settings.pairing
        while True:
            try:
                self.speaker.play(await synthesize(s.speak_command, text, self.settings.audio.sample_rate))
            except SpeechError as exc:
                log.warning("cannot say the code (%s); read it from this log", exc)
                return
            if s.announce_every_sec <= 0:
                return
            await asyncio.sleep(s.announce_every_sec)

    # Mute: the family's word that the device hears nothing

    async def set_muted(self, muted: bool) -> None:
        if muted == self.muted:
            return
        await asyncio.to_thread(self.mute.set, muted)
        self.muted = muted
        self._mute_changed.set()
        self._mute_changed = asyncio.Event()
        log.info("muted: the microphone is closed" if muted else "unmuted: the microphone opens")
        self._set_status("mic", "muted" if muted else None)
        if self.listening is not None:
            self.listening.close()
        if self.settings.cue.enabled:
            self.speaker.overlay(self._falling if muted else self._rising)

    def _watch_button(self) -> asyncio.Task | None:
        d = self.settings.device
        if d.mute_button is None:
            return None

        async def toggle() -> None:
            await self.set_muted(not self.muted)

        watching = watch_button(d.mute_button, d.mute_key, toggle, self.settings.audio.retry_sec)
        return asyncio.create_task(watching, name="mute-button")

    async def _until_muted(self, muted: bool) -> None:
        while self.muted != muted:
            await self._mute_changed.wait()

    async def _control(self, command: str) -> dict:
        if command in ("mute", "unmute"):
            await self.set_muted(command == "mute")
        return {
            "muted": self.muted,
            "wake": self.settings.voice.wake,
            "wake_word": self.settings.voice.wake_word,
            "status": "; ".join(self._status.values()),
        }

    def _woken(self) -> None:
        """The wake word was heard (in the capture thread)."""
        log.info("wake word heard")
        if self.settings.cue.enabled:
            self.speaker.overlay(self._rising)

    # Heartbeats

    async def _heartbeats(self, token: str) -> None:
        hb = self.settings.heartbeat
        interval = hb.interval_sec
        backoff = Backoff(self.settings.reconnect)
        while True:
            changed = self._mute_changed  # taken before the beat: a mute while it is sent is told next
            try:
                interval = await self.api.heartbeat(token, muted=self.muted)
            except Unauthorized as exc:
                raise Unpaired(str(exc)) from exc
            except (Unreachable, Refused) as exc:
                await self._retry_later(backoff, exc)
                continue
            if backoff.failures:
                log.info("sudo-api is reachable again")
            backoff.reset()
            self._set_status("api", None)
            interval = min(max(interval, 0.1), 3600.0)  # whatever sudo-api says, neither a flood nor silence
            interval *= random.uniform(1 - hb.jitter, 1 + hb.jitter)
            with contextlib.suppress(TimeoutError):  # a mute or unmute is told at once
                await asyncio.wait_for(changed.wait(), interval)

    # Voice

    async def _fetch_voice_token(self, token: str) -> VoiceToken:
        try:
            self._voice = await self.api.voice_token(token)
        except Unauthorized as exc:
            raise Unpaired(str(exc)) from exc
        log.debug("LiveKit token for %s, valid for %.0f s", self._voice.room, self._voice.remaining())
        return self._voice

    async def _voice_token(self, token: str, *, renew: bool) -> VoiceToken:
        """A LiveKit token: the current one unless `renew` or near expiry, else a new one.

        When getting a new one fails but the current one is still valid, the current one is used:
        LiveKit may be reachable while sudo-api is not."""
        current = self._voice
        if current is not None and not renew and current.remaining() > self.settings.voice.token_margin_sec:
            return current
        try:
            return await self._fetch_voice_token(token)
        except ApiError:
            if current is not None and current.remaining() > 0:
                return current
            raise

    async def _voice_loop(self, token: str) -> None:
        v = self.settings.voice
        backoff = Backoff(self.settings.reconnect)
        renew = False
        told_not_configured = False
        while True:
            try:
                voice = await self._voice_token(token, renew=renew)
            except VoiceNotConfigured as exc:
                if not told_not_configured:
                    log.warning("%s; asking again every %s", exc, _seconds(v.not_configured_retry_sec))
                    told_not_configured = True
                retry = _seconds(v.not_configured_retry_sec)
                self._set_status("state", f"paired; voice is not set up on sudo-api, retrying in {retry}")
                await asyncio.sleep(v.not_configured_retry_sec)
                continue
            except (Unreachable, Refused) as exc:
                await self._retry_later(backoff, exc)
                continue
            told_not_configured = False
            room = self.room_factory()
            try:
                await room.connect(voice.url, voice.token)
            except RoomError as exc:
                await room.close()
                delay = backoff.next()
                log.warning("%s; retrying in %s", exc, _seconds(delay))
                self._set_status("state", f"paired; LiveKit unreachable, retrying in {_seconds(delay)}")
                renew = True  # the token may be what was refused
                await asyncio.sleep(delay)
                continue
            renew = False
            backoff.reset()
            log.info("connected to %s", voice.room)
            self._set_status("state", f"connected to {voice.room}")
            try:
                await self._in_room(room, token)
            except AgentAway as exc:
                # A new room (the old one gone after its departure timeout) brings a new agent.
                # The device's token asks LiveKit to close its room 2 s after it left; a room an
                # agent's late join made again has the server's own timeout, and a device that
                # came back sooner would keep that room, with no agent, for ever.
                await room.close()
                self._aways += 1
                wait = v.agent_wait_sec
                if self._aways > 1:
                    wait = max(wait, v.room_departure_sec + 2)
                log.warning("%s; joining %s again in %s", exc, voice.room, _seconds(wait))
                self._set_status("state", "paired; the assistant is away, joining its room again")
                await asyncio.sleep(wait)
                continue
            finally:
                await room.close()
            delay = backoff.next()
            log.warning("left %s (%s); joining again in %s", voice.room, room.reason, _seconds(delay))
            self._set_status("state", f"paired; LiveKit connection lost, joining again in {_seconds(delay)}")
            await asyncio.sleep(delay)

    async def _in_room(self, room: Room, token: str) -> None:
        await _race(
            room.disconnected.wait(),
            self._microphone(room),
            self._agent_audio(room),
            self._follow_agent(room),
            self._renew_voice_token(token),
        )

    async def _renew_voice_token(self, token: str) -> None:
        """Keep a valid LiveKit token at hand, so a lost room is joined again even with sudo-api down."""
        backoff = Backoff(self.settings.reconnect)
        v = self.settings.voice
        while True:
            assert self._voice is not None
            await asyncio.sleep(max(0.0, self._voice.remaining() - v.token_margin_sec))
            try:
                await self._fetch_voice_token(token)
                backoff.reset()
            except VoiceNotConfigured as exc:
                log.warning("%s; keeping the current LiveKit token", exc)
                await asyncio.sleep(v.not_configured_retry_sec)
            except (Unreachable, Refused) as exc:
                delay = backoff.next()
                log.warning("cannot renew the LiveKit token yet (%s); retrying in %s", exc, _seconds(delay))
                await asyncio.sleep(delay)

    async def _microphone(self, room: Room) -> None:
        """Capture while unmuted; a mute closes the capture device itself, not just the upload."""
        gate = SpeechGate(self.settings.vad, self.settings.audio.period_ms)
        while True:
            await self._until_muted(False)
            gate.reset()
            await _race(self._capture(room, gate), self._until_muted(True))
            if not self.muted:
                return  # the capture ended by itself: the room is gone

    async def _capture(self, room: Room, gate: SpeechGate) -> None:
        a = self.settings.audio
        speaking = self.speaker.is_sounding if a.half_duplex else None
        while True:
            try:
                async with Microphone(
                    a,
                    gate=gate,
                    half_duplex=speaking,
                    echo=self.speaker.echo_level,
                    listening=self.listening,
                    stats=self.mic_stats,
                ) as mic:
                    log.info("microphone %r is open", a.mic_device)
                    self._set_status("mic", None)
                    async for frame in mic:
                        await room.send_audio(frame.pcm)
            except AudioDeviceError as exc:
                log.error("%s; trying again in %s", exc, _seconds(a.retry_sec))
                self._set_status("mic", "microphone unavailable")
                gate.reset()
                await asyncio.sleep(a.retry_sec)
            except RoomError:
                return  # the room is gone: _in_room is ending

    async def _agent_audio(self, room: Room) -> None:
        async for pcm in room.agent_audio():
            self.speaker.play(pcm)
        await room.disconnected.wait()

    async def _follow_agent(self, room: Room) -> None:
        """The agent's states: the wake word's window and the cue follow them. With no agent
        in the room for `voice.agent_wait_sec`, say so and leave (`AgentAway`): joining again
        once the room is gone has LiveKit dispatch a new one (it dispatches a room's agents
        when it creates the room)."""
        wait = self.settings.voice.agent_wait_sec
        states = aiter(room.agent_states())
        here = False
        while True:
            try:
                state = await asyncio.wait_for(anext(states), None if here else wait)
            except StopAsyncIteration:
                await room.disconnected.wait()
                return
            except TimeoutError:
                await self._say_agent_away()
                raise AgentAway(f"no agent in the room for {_seconds(wait)}") from None
            here = state != AGENT_GONE
            if not here:
                if self.listening is not None:
                    self.listening.close()
                continue
            self._aways = 0
            log.debug("agent is %s", state)
            if self.listening is not None:
                self.listening.agent_is(state)
            if state == "listening" and self.settings.cue.enabled:
                self.speaker.overlay(self._cue)

    async def _say_agent_away(self) -> None:
        if self._aways:
            return  # once per outage, not at every try
        command, rate = self.settings.pairing.speak_command, self.settings.audio.sample_rate
        try:
            self.speaker.play(await synthesize(command, AGENT_AWAY, rate))
        except SpeechError as exc:
            log.warning("cannot say that the assistant is away: %s", exc)


async def _race(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run side by side until the first ends (returns or raises); cancel the others; re-raise."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


async def serve(settings: Settings) -> None:
    """The daemon: the satellite with the LiveKit room, until SIGTERM or SIGINT."""

    def livekit_room() -> Room:
        return LiveKitRoom(settings.audio, connect_timeout_sec=settings.voice.connect_timeout_sec)

    notifier = Notifier()
    satellite = Satellite(settings, room_factory=livekit_room, notifier=notifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await _race(stop.wait(), satellite.run())
    log.info("stopped")
