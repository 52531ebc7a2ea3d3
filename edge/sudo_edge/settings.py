"""Settings: `/etc/sudo/edge.toml` (or `$SUDO_EDGE_CONFIG`), every key overridable from the environment.

A key `audio.mic_device` in the file is `[audio] mic_device = ...`; its environment override is
`SUDO_EDGE_AUDIO_MIC_DEVICE`. Unknown sections, keys and variables, and values of the wrong type
or out of range, are errors that name the key: a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/sudo/edge.toml")
CONFIG_VARIABLE = "SUDO_EDGE_CONFIG"
ENV_PREFIX = "SUDO_EDGE_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and says why."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class ApiSettings:
    url: str = ""
    """Base URL of sudo-api, e.g. https://sudo.example.org (required)."""

    timeout_sec: float = 10.0
    """Longest one request to sudo-api may take, connecting included (seconds)."""

    ca_file: Path | None = None
    """PEM file of the CA that signed sudo-api's certificate; empty = the system's CAs."""

    def __post_init__(self) -> None:
        _check(
            self.url == "" or self.url.startswith(("http://", "https://")),
            "api.url",
            f"must start with https:// (or http://), got {self.url!r}",
        )
        _check(self.timeout_sec > 0, "api.timeout_sec", "must be positive")


@dataclass(frozen=True)
class DeviceSettings:
    name: str = ""
    """Name the family sees on /integrations (at most 80 characters); empty = the hostname."""

    state_dir: Path = Path("/var/lib/sudo-edge")
    """Where the device token is kept, mode 0600 (systemd's StateDirectory=sudo-edge)."""

    log_level: str = "INFO"
    """Python logging level: DEBUG, INFO, WARNING or ERROR."""

    control_socket: Path = Path("/run/sudo-edge/control.sock")
    """Where `sudo-edge mute`, `unmute` and `status` reach the running daemon
    (systemd's RuntimeDirectory=sudo-edge)."""

    mute_button: Path | None = None
    """Input device of a mute button, e.g. a GPIO pin through the gpio-keys overlay:
    /dev/input/by-path/platform-button@11-event; empty = no button."""

    mute_key: int = 248
    """Key code the button sends (248 is KEY_MICMUTE; `evtest` shows a button's)."""

    def __post_init__(self) -> None:
        _check(len(self.name) <= 80, "device.name", "must be at most 80 characters")
        _check(0 < self.mute_key < 0x300, "device.mute_key", "must be a key code (1 to 767)")
        _check(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "device.log_level",
            f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}",
        )

    @property
    def display_name(self) -> str:
        return (self.name or socket.gethostname() or "Sudo device")[:80]


@dataclass(frozen=True)
class PairingSettings:
    poll_sec: float = 3.0
    """How often the pairing state is asked for while the code waits to be typed (seconds)."""

    announce_every_sec: float = 60.0
    """The code is spoken again this often while it waits (seconds; 0 = once per code)."""

    speak_command: tuple[str, ...] = ("espeak-ng", "--stdout", "-s", "130")
    """Text-to-speech command; the text is its last argument and it writes WAV to stdout."""

    max_codes: int = 6
    """Codes asked for in a row, none typed, before the device stops offering one (an hour at
    sudo-api's 10-minute codes): a device left unpaired, or revoked, is not open to guessers
    for ever. Restarting sudo-edge offers codes again. 0 = no end."""

    def __post_init__(self) -> None:
        _check(self.poll_sec > 0, "pairing.poll_sec", "must be positive")
        _check(self.announce_every_sec >= 0, "pairing.announce_every_sec", "must be 0 or more")
        _check(self.max_codes >= 0, "pairing.max_codes", "must be 0 or more")


@dataclass(frozen=True)
class HeartbeatSettings:
    interval_sec: float = 30.0
    """Time between heartbeats until sudo-api says otherwise in its `next_in` (seconds)."""

    jitter: float = 0.1
    """Each wait is the interval times a random factor in [1 - jitter, 1 + jitter] (fraction)."""

    def __post_init__(self) -> None:
        _check(self.interval_sec > 0, "heartbeat.interval_sec", "must be positive")
        _check(0 <= self.jitter < 1, "heartbeat.jitter", "must be at least 0 and below 1")


@dataclass(frozen=True)
class ReconnectSettings:
    min_sec: float = 1.0
    """Wait after a first failure to reach sudo-api or LiveKit; doubled at each further one (seconds)."""

    max_sec: float = 60.0
    """Longest wait between two attempts (seconds)."""

    jitter: float = 0.25
    """Each wait is shortened by a random fraction up to this, so devices don't retry in step (fraction)."""

    def __post_init__(self) -> None:
        _check(self.min_sec > 0, "reconnect.min_sec", "must be positive")
        _check(self.max_sec >= self.min_sec, "reconnect.max_sec", "must be at least reconnect.min_sec")
        _check(0 <= self.jitter < 1, "reconnect.jitter", "must be at least 0 and below 1")


@dataclass(frozen=True)
class VoiceSettings:
    connect_timeout_sec: float = 20.0
    """Longest joining the LiveKit room may take before it counts as failed (seconds)."""

    token_margin_sec: float = 120.0
    """The LiveKit token is renewed this long before it expires (seconds)."""

    not_configured_retry_sec: float = 60.0
    """When sudo-api says voice is not set up, ask again after this long (seconds)."""

    wake: str = "wakeword"
    """"wakeword": the microphone's audio goes to the agent only after the wake word (heard on
    the device itself, offline); "always": all speech goes, as soon as it is heard."""

    wake_word: str = "okay_nabu"
    """The wake word: okay_nabu, hey_jarvis, alexa or hey_mycroft (microWakeWord's models)."""

    follow_up_sec: float = 6.0
    """After the wake word, and again after each answer, speech within this long goes to the
    agent without the wake word: time to ask, and to reply (seconds)."""

    agent_wait_sec: float = 15.0
    """With no agent in the room this long (it never came, or it left: the voice bridge
    restarting), the device says so, leaves, and joins again after as long, when LiveKit has
    closed the room (sudo-api's tokens close it 2 s after the device left) and dispatches a new
    agent to the new one (seconds)."""

    room_departure_sec: float = 20.0
    """How long the LiveKit server keeps a room that another participant's join created (the
    agent's, come late) after its last participant left: livekit-server's
    `room.departure_timeout`. A second join in a row with no agent in the room stays out longer
    than this, so that the room is gone and the next join makes a new one (seconds)."""

    def __post_init__(self) -> None:
        _check(self.connect_timeout_sec > 0, "voice.connect_timeout_sec", "must be positive")
        _check(self.token_margin_sec >= 0, "voice.token_margin_sec", "must be 0 or more")
        _check(self.not_configured_retry_sec > 0, "voice.not_configured_retry_sec", "must be positive")
        _check(self.wake in ("wakeword", "always"), "voice.wake", 'must be "wakeword" or "always"')
        words = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
        _check(self.wake_word in words, "voice.wake_word", f"must be one of {', '.join(words)}")
        _check(self.follow_up_sec > 0, "voice.follow_up_sec", "must be positive")
        _check(self.agent_wait_sec > 0, "voice.agent_wait_sec", "must be positive")
        _check(self.room_departure_sec >= 0, "voice.room_departure_sec", "must be 0 or more")


@dataclass(frozen=True)
class AudioSettings:
    mic_device: str = "default"
    """ALSA capture PCM, e.g. "plughw:CARD=Device,DEV=0" (`arecord -L` lists them)."""

    speaker_device: str = "default"
    """ALSA playback PCM, e.g. "plughw:CARD=Headphones,DEV=0" (`aplay -L` lists them)."""

    sample_rate: int = 16000
    """Sample rate of microphone and speaker audio, mono S16_LE (hertz)."""

    period_ms: int = 20
    """Audio is read, judged by the VAD and sent in frames this long (milliseconds)."""

    retry_sec: float = 5.0
    """A sound device that fails to open or errors is opened again after this long (seconds)."""

    playback_lead_ms: int = 60
    """Speaker audio is handed to ALSA at most this far ahead of real time (milliseconds)."""

    half_duplex: bool = False
    """Send nothing at all while the speaker plays (no interrupting the agent): for a speaker so
    loud at the microphone that no voice can be heard over its echo."""

    echo_tail_ms: int = 300
    """The speaker's echo is reckoned with this long after it falls quiet (milliseconds)."""

    def __post_init__(self) -> None:
        _check(
            self.sample_rate in (8000, 16000, 24000, 48000),
            "audio.sample_rate",
            "must be 8000, 16000, 24000 or 48000",
        )
        _check(10 <= self.period_ms <= 100, "audio.period_ms", "must be between 10 and 100")
        _check(self.sample_rate * self.period_ms % 1000 == 0, "audio.period_ms", "must be whole samples")
        _check(self.retry_sec > 0, "audio.retry_sec", "must be positive")
        _check(self.playback_lead_ms >= 0, "audio.playback_lead_ms", "must be 0 or more")
        _check(self.echo_tail_ms >= 0, "audio.echo_tail_ms", "must be 0 or more")
        _check(bool(self.mic_device), "audio.mic_device", "must not be empty")
        _check(bool(self.speaker_device), "audio.speaker_device", "must not be empty")

    @property
    def period_frames(self) -> int:
        """Samples in one period (mono, so frames and samples are the same)."""
        return self.sample_rate * self.period_ms // 1000

    @property
    def period_bytes(self) -> int:
        return self.period_frames * 2


@dataclass(frozen=True)
class VadSettings:
    threshold_db: float = 10.0
    """A frame is speech when its level is this far above the noise floor (decibels)."""

    barge_in_db: float = 10.0
    """While the speaker plays, a frame is speech (and interrupts the agent) when it is this far
    above the speaker's echo at the microphone, whose level is learned as it plays (decibels)."""

    echo_coupling_db: float = 0.0
    """The echo's level at the microphone against the level played, before any is learned: 0
    assumes the worst, as loud as played; a speaker across the room is nearer -30 (decibels)."""

    min_level_dbfs: float = -50.0
    """Frames quieter than this are never speech, however quiet the room (dBFS)."""

    start_ms: int = 60
    """Speech must last this long before the microphone is sent (milliseconds)."""

    hangover_ms: int = 800
    """Sending goes on this long after speech stops; the agent's end of turn needs it (milliseconds)."""

    preroll_ms: int = 300
    """Audio from before speech was detected that is sent with it, so no syllable is cut (milliseconds)."""

    floor_rise_db_per_sec: float = 3.0
    """How fast the noise floor follows a louder room (decibels per second); a quieter one, at once."""

    def __post_init__(self) -> None:
        _check(self.threshold_db > 0, "vad.threshold_db", "must be positive")
        _check(self.barge_in_db > 0, "vad.barge_in_db", "must be positive")
        _check(-80 <= self.echo_coupling_db <= 20, "vad.echo_coupling_db", "must be between -80 and 20")
        _check(self.min_level_dbfs < 0, "vad.min_level_dbfs", "must be below 0 dBFS")
        for key in ("start_ms", "hangover_ms", "preroll_ms"):
            _check(getattr(self, key) >= 0, f"vad.{key}", "must be 0 or more")
        _check(self.floor_rise_db_per_sec > 0, "vad.floor_rise_db_per_sec", "must be positive")


@dataclass(frozen=True)
class CueSettings:
    enabled: bool = True
    """Play short tones: when the agent starts listening, when the wake word is heard (rising),
    and on mute (falling) and unmute (rising)."""

    frequency_hz: float = 880.0
    """Pitch of the tone (hertz)."""

    duration_ms: int = 120
    """Length of the tone (milliseconds)."""

    volume: float = 0.3
    """Peak amplitude of the tone (fraction of full scale)."""

    def __post_init__(self) -> None:
        _check(20 <= self.frequency_hz <= 4000, "cue.frequency_hz", "must be between 20 and 4000")
        _check(10 <= self.duration_ms <= 2000, "cue.duration_ms", "must be between 10 and 2000")
        _check(0 < self.volume <= 1, "cue.volume", "must be above 0 and at most 1")


@dataclass(frozen=True)
class Settings:
    api: ApiSettings = field(default_factory=ApiSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    pairing: PairingSettings = field(default_factory=PairingSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    reconnect: ReconnectSettings = field(default_factory=ReconnectSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    cue: CueSettings = field(default_factory=CueSettings)

    def __post_init__(self) -> None:
        _check(
            self.voice.wake != "wakeword" or self.audio.sample_rate == 16000,
            "voice.wake",
            f"the wake word needs audio.sample_rate = 16000, not {self.audio.sample_rate}",
        )


def load(environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read `$SUDO_EDGE_CONFIG` (or /etc/sudo/edge.toml if present), then the SUDO_EDGE_* overrides."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_VARIABLE)
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    data: dict[str, typing.Any] = {}
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{CONFIG_VARIABLE}={explicit}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc

    sections = {f.name: f.default_factory for f in dataclasses.fields(Settings)}  # type: ignore[misc]
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    _check_environment(env, sections)
    loaded = {name: _load_section(cls, name, data.get(name, {}), env, path) for name, cls in sections.items()}
    settings = Settings(**loaded)
    if not settings.api.url:
        raise ConfigError(f'api.url is not set: put `[api] url = "https://..."` in {path}')
    return settings


def _check_environment(env: typing.Mapping[str, str], sections: dict[str, typing.Any]) -> None:
    known = {CONFIG_VARIABLE}
    for name, cls in sections.items():
        known |= {f"{ENV_PREFIX}{name}_{f.name}".upper() for f in dataclasses.fields(cls)}
    unknown = sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known)
    if unknown:
        raise ConfigError(f"unknown environment variable(s) {unknown}")


def _load_section(
    cls: type, name: str, table: typing.Any, env: typing.Mapping[str, str], path: Path
) -> typing.Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [{name}]: {sorted(unknown)}; known: {known}")
    values = {}
    for key in known:
        variable = f"{ENV_PREFIX}{name}_{key}".upper()
        if variable in env:
            values[key] = _coerce(hints[key], env[variable], variable, from_env=True)
        elif key in table:
            values[key] = _coerce(hints[key], table[key], f"{name}.{key}", from_env=False)
    return cls(**values)


def _coerce(hint: typing.Any, value: typing.Any, where: str, *, from_env: bool) -> typing.Any:
    """Turn a TOML value or an environment string into the field's declared type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: empty means None
        if value == "":
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if typing.get_origin(hint) is tuple:
            items = shlex.split(value) if from_env else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise TypeError("expected a list of strings")
            return tuple(items)
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower() if from_env else None
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if hint in (int, float):
            if isinstance(value, bool) or not (from_env or isinstance(value, int | float)):
                raise TypeError(f"expected a number, got {value!r}")
            if hint is int and isinstance(value, float):
                raise TypeError(f"expected a whole number, got {value!r}")
            return hint(value)
        if not from_env and not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return hint(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
