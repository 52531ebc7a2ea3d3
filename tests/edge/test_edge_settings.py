"""Settings: the file, the environment, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sudo_edge.settings import ConfigError, Settings, load

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "edge.toml"


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return {"SUDO_EDGE_CONFIG": str(path)}


def test_the_example_config_documents_every_setting_with_its_default():
    env = {"SUDO_EDGE_CONFIG": str(EXAMPLE), "SUDO_EDGE_API_URL": "https://sudo.example.org"}
    loaded = load(env)
    defaults = Settings()
    assert dataclasses.replace(loaded, api=defaults.api) == defaults
    text = EXAMPLE.read_text()
    for section in dataclasses.fields(Settings):
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
            assert re.search(rf"^{key.name} = ", text, re.M), f"{section.name}.{key.name} is not in edge.toml"


def test_the_file_then_the_environment(tmp_path: Path):
    env = write(
        tmp_path,
        """
[api]
url = "https://sudo.example.org"
ca_file = "/etc/ssl/home-ca.pem"
[audio]
mic_device = "plughw:CARD=Device,DEV=0"
period_ms = 10
[vad]
hangover_ms = 600
""",
    )
    env |= {
        "SUDO_EDGE_AUDIO_PERIOD_MS": "30",
        "SUDO_EDGE_AUDIO_HALF_DUPLEX": "no",
        "SUDO_EDGE_HEARTBEAT_JITTER": "0.3",
        "SUDO_EDGE_PAIRING_SPEAK_COMMAND": "espeak-ng --stdout -v 'en-gb'",
        "SUDO_EDGE_API_CA_FILE": "",
    }
    s = load(env)
    assert s.api.url == "https://sudo.example.org"
    assert s.api.ca_file is None, "an empty override clears an optional path"
    assert s.audio.mic_device == "plughw:CARD=Device,DEV=0"
    assert s.audio.period_ms == 30 and s.audio.period_frames == 480
    assert s.audio.half_duplex is False
    assert s.heartbeat.jitter == 0.3
    assert s.pairing.speak_command == ("espeak-ng", "--stdout", "-v", "en-gb")
    assert s.vad.hangover_ms == 600
    assert s.device.state_dir == Path("/var/lib/sudo-edge")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[audio]\nmic = 'hw:1'\n", {}, r"unknown key\(s\) in \[audio\]: \['mic'\]"),
        ("[sound]\n", {}, r"unknown section\(s\) \['sound'\]"),
        ("", {"SUDO_EDGE_AUDIO_MIC": "hw:1"}, r"unknown environment variable\(s\) \['SUDO_EDGE_AUDIO_MIC'\]"),
        ("[audio]\nperiod_ms = '20'\n", {}, r"audio\.period_ms: expected a number"),
        ("[audio]\nperiod_ms = 20.5\n", {}, r"audio\.period_ms: expected a whole number"),
        ("[audio]\nhalf_duplex = 'yes'\n", {}, r"audio\.half_duplex: expected true or false"),
        ("", {"SUDO_EDGE_AUDIO_SAMPLE_RATE": "fast"}, r"SUDO_EDGE_AUDIO_SAMPLE_RATE: .*'fast'"),
        ("[audio]\nsample_rate = 44100\n", {}, r"audio\.sample_rate: must be 8000, 16000, 24000 or 48000"),
        ("[heartbeat]\njitter = 1.5\n", {}, r"heartbeat\.jitter: must be at least 0 and below 1"),
        (
            "[reconnect]\nmin_sec = 5\nmax_sec = 1\n",
            {},
            r"reconnect\.max_sec: must be at least reconnect\.min_sec",
        ),
        ("[audio]\nmic_device = 1\n", {}, r"audio\.mic_device: expected a string"),
        (
            "[pairing]\nspeak_command = 'espeak-ng'\n",
            {},
            r"pairing\.speak_command: expected a list of strings",
        ),
        ("[api]\nurl = 'sudo.example.org'\n", {}, r"api\.url: must start with https://"),
        ("[device]\nlog_level = 'LOUD'\n", {}, r"device\.log_level: must be DEBUG, INFO, WARNING or ERROR"),
        ("audio = 3\n", {}, r"\[audio\] must be a table"),
        ("[audio\n", {}, r"edge\.toml: "),
    ],
)
def test_mistakes_are_errors_that_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str):
    env = write(tmp_path, text) | env
    if "url =" not in text:
        env["SUDO_EDGE_API_URL"] = "https://sudo.example.org"
    with pytest.raises(ConfigError, match=message):
        load(env)


def test_the_api_url_is_required(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"api\.url is not set: put `\[api\] url = \"https://...\"` in"):
        load(write(tmp_path, "[device]\nname = 'Kitchen'\n"))


def test_a_named_config_file_must_exist(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"SUDO_EDGE_CONFIG=.*: no such file"):
        load({"SUDO_EDGE_CONFIG": str(tmp_path / "missing.toml")})


def test_the_device_name_defaults_to_the_hostname():
    import socket

    assert Settings().device.display_name == socket.gethostname()[:80]
