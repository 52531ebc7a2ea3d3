from __future__ import annotations

from pathlib import Path

import pytest

from sudo_core import config


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "sudo.toml"
    path.write_text(text)
    return {"SUDO_CONFIG": str(path)}


def test_defaults_without_a_file(tmp_path: Path):
    settings = config.load({"SUDO_CONFIG": ""} | {})
    assert settings.runtime.idle_sec == 1800
    assert settings.provisioner.idle_exit_sec == 300
    assert settings.core.database_path == Path("/var/lib/sudo/sudo.db")
    assert settings.runtime.host_address == "10.213.0.1"


def test_file_then_environment(tmp_path: Path):
    env = write(tmp_path, '[runtime]\nidle_sec = 60\nmemory = "2g"\n[core]\nstate_dir = "/srv/s"\n')
    settings = config.load(
        env
        | {
            "SUDO_RUNTIME_IDLE_SEC": "90.5",
            "SUDO_RUNTIME_EGRESS": "yes",
            "SUDO_RUNTIME_TOOLSETS": "memory, todo",
            "SUDO_CORE_DATABASE": "",
        }
    )
    assert settings.runtime.idle_sec == 90.5
    assert settings.runtime.memory == "2g"
    assert settings.runtime.egress is True
    assert settings.runtime.toolsets == ("memory", "todo")
    assert settings.core.database_path == Path("/srv/s/sudo.db")


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[nope]\n", {}, "nope"),
        ("[runtime]\nidel_sec = 1\n", {}, "idel_sec"),
        ('[runtime]\nidle_sec = "soon"\n', {}, "runtime.idle_sec"),
        ("[runtime]\nimage = 5\n", {}, "runtime.image"),
        ("", {"SUDO_RUNTIME_EGRESS": "perhaps"}, "SUDO_RUNTIME_EGRESS"),
        ("", {"SUDO_RUNTIME_SUBNET": "10.0.0.0/33"}, "runtime.subnet"),
        # No family container runs as root, whatever the image would choose.
        ('[runtime]\nuser = ""\n', {}, "runtime.user"),
        ('[runtime]\nuser = "0:0"\n', {}, "runtime.user"),
        ("", {"SUDO_RUNTIME_USER": "10000:0"}, "runtime.user"),
        ('[runtime]\nbridge = "br-0123456789abc"\n', {}, "runtime.bridge"),
        ('[runtime]\nbridge = "sudo rt"\n', {}, "runtime.bridge"),
        ("[runtime\n", {}, "sudo.toml"),
        ('[api]\nservice_listen = "0.0.0.0:8601"\n', {}, "api.service_listen"),  # every family's keys
        ("", {"SUDO_API_SERVICE_LISTEN": "192.0.2.1:8601"}, "api.service_listen"),
        ("", {"SUDO_API_SIGNUP": "sometimes"}, "api.signup"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text, env, names):
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text) | env)
    assert names in str(info.value)


def test_an_explicit_missing_file_is_an_error(tmp_path: Path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load({"SUDO_CONFIG": str(tmp_path / "missing.toml")})
