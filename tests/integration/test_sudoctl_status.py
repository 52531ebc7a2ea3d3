"""`sudoctl status` against a real systemd (PID 1 in a container) over its real system D-Bus,
with stand-ins for the sudo units, and no provisioner listening."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from systemd_box import systemd_box

SUDOCTL = Path(sys.executable).parent / "sudoctl"
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"
UNITS = {
    "sudo.target": "[Unit]\nWants=sudo-api.service sudo-gateway.service sudo-voice-bridge.service"
    " sudo-provisioner.socket sudo-reaper.timer docker.service\n",
    "sudo-api.service": SLEEPER,
    "sudo-gateway.service": SLEEPER,
    "sudo-voice-bridge.service": SLEEPER,
    "docker.service": SLEEPER,
    "sudo-provisioner.socket": "[Socket]\nListenStream=/run/sudo/provisioner.sock\n",
    "sudo-provisioner.service": SLEEPER,
    "sudo-reaper.timer": "[Timer]\nOnActiveSec=1h\n",
    "sudo-reaper.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
}


@pytest.fixture(scope="module")
def box() -> Iterator[tuple[docker.models.containers.Container, str]]:
    with systemd_box(UNITS) as (container, address):
        code, output = container.exec_run(["systemctl", "start", "sudo.target"])
        assert code == 0, output
        yield container, address


def sudoctl_status(tmp_path: Path, bus: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "SUDO_CONFIG": "",
        "SUDO_CORE_STATE_DIR": str(tmp_path),
        "SUDO_PROVISIONER_SOCKET": str(tmp_path / "nobody-listens.sock"),
        "DBUS_SYSTEM_BUS_ADDRESS": bus,
    }
    return subprocess.run([SUDOCTL, "status"], env=env, capture_output=True, text=True, timeout=60)


def test_status_of_healthy_units_then_of_a_failed_one(box, tmp_path: Path):
    container, bus = box
    result = sudoctl_status(tmp_path, bus)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    states = {parts[1]: (parts[0], parts[2]) for parts in (line.split() for line in lines[:9])}
    assert states == {
        "sudo.target": ("ok", "active/active"),
        "sudo-api.service": ("ok", "active/running"),
        "sudo-gateway.service": ("ok", "active/running"),
        "sudo-voice-bridge.service": ("ok", "active/running"),
        "sudo-provisioner.socket": ("ok", "active/listening"),
        "sudo-provisioner.service": ("ok", "inactive/dead"),  # socket-activated: nobody asked yet
        "sudo-reaper.timer": ("ok", "active/waiting"),
        "sudo-reaper.service": ("ok", "inactive/dead"),
        "docker.service": ("ok", "active/running"),
    }
    next_run = re.search(r"sudo-reaper\.timer .* next in (\d+) s", result.stdout)
    assert next_run and 3000 < int(next_run.group(1)) <= 3600, result.stdout
    assert lines[9] == "units: all healthy"
    assert lines[10].startswith(f"fleet: cannot reach the provisioner at {tmp_path}/nobody-listens.sock")
    assert len(lines) == 11 and not result.stderr

    code, output = container.exec_run(["systemctl", "kill", "--signal=KILL", "sudo-gateway.service"])
    assert code == 0, output
    deadline = time.monotonic() + 10
    while container.exec_run(["systemctl", "is-failed", "sudo-gateway.service"]).exit_code != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = sudoctl_status(tmp_path, bus)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^BAD +sudo-gateway\.service +failed/failed$", result.stdout, re.M), result.stdout
    assert "units: unhealthy: sudo-gateway.service\n" in result.stdout
    assert "ok  sudo-api.service" in result.stdout


def test_no_system_bus_is_a_one_line_error(tmp_path: Path):
    result = sudoctl_status(tmp_path, f"unix:path={tmp_path}/no-bus")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sudoctl: cannot ask systemd over the system D-Bus at unix:path={tmp_path}/no-bus: "
        "[err -2]: Could not open a bus to DBus"
    ]
