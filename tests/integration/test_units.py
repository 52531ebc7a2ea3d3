"""The unit files under systemd's own analyzer (systemd 252, Debian 12), in the systemd test image:
`verify` must say nothing at all, and `security` must score every service at most 1.5."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import docker
import pytest
from systemd_box import systemd_box

from sudo_core.config import RuntimeSettings

IMAGE = os.environ.get("SYSTEMD_IMAGE", "sudo-systemd:bookworm")
UNITS = Path(__file__).resolve().parents[2] / "units"
DAEMONS = ("sudo-api", "sudo-gateway", "sudo-provisioner", "sudo-reaper", "sudo-voice-bridge")
SERVICES = (*DAEMONS, "sudo-firewall", "sudo-backup", "sudo-web", "livekit-server", "sudo-edge")
EXECUTABLES = (
    *(
        f"/opt/venvs/sudo/bin/{exe}"
        for exe in ("sudo-api", "sudo-gateway", "sudo-provisioner", "sudo-reaper", "sudoctl")
    ),
    "/opt/venvs/sudo-voice-bridge/bin/sudo-voice-bridge",
    "/usr/local/bin/livekit-server",
    "/opt/venvs/sudo-edge/bin/sudo-edge",
    "/usr/bin/caddy",
)
# Installs the units as the packages do, with stand-ins for the daemons' executables (verify
# checks that ExecStart= exists), then analyzes them.
SCRIPT = """
set -e
mkdir -p /opt/venvs/sudo/bin /opt/venvs/sudo-voice-bridge/bin /opt/venvs/sudo-edge/bin
for exe in {executables}; do printf '#!/bin/sh\\n' > $exe; chmod +x $exe; done
mkdir -p /etc/livekit && : > /etc/livekit/livekit.yaml
cp /units/*.service /units/*.socket /units/*.timer /units/*.target /etc/systemd/system/
cp /units/sysusers.d/sudo.conf /usr/lib/sysusers.d/
groupadd --system docker
systemd-sysusers >/dev/null
cd /etc/systemd/system
echo "== verify"
systemd-analyze verify sudo.target sudo-*.service sudo-*.socket sudo-*.timer livekit-server.service 2>&1
echo "== rc $?"
for unit in {services}; do
  echo "== security $unit"
  systemd-analyze security --offline=yes $unit.service 2>&1 | tail -n 1
done
"""


@pytest.fixture(scope="module")
def analysis() -> str:
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE} is missing: run `make systemd-image` first")
    output = client.containers.run(
        IMAGE,
        ["sh", "-c", SCRIPT.format(executables=" ".join(EXECUTABLES), services=" ".join(SERVICES))],
        entrypoint=[],
        volumes={str(UNITS): {"bind": "/units", "mode": "ro"}},
        network_mode="none",
        remove=True,
    )
    return output.decode()


def test_verify_is_silent(analysis: str):
    verify = analysis.split("== verify\n")[1].split("== rc")[0]
    assert verify == "", verify  # a warning is a failure too
    assert "== rc 0" in analysis


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_hardened(analysis: str, service: str):
    line = analysis.split(f"== security {service}\n")[1].splitlines()[0]
    score = float(re.search(r"exposure level for \S+: ([\d.]+)", line).group(1))
    assert score <= 1.5, line


@pytest.mark.parametrize("service", ("sudo-api", "sudo-gateway"))
def test_the_web_facing_services_have_a_memory_and_task_ceiling(service: str):
    """What a flood or a leak in one of them may take before systemd restarts it (the family
    runtimes are what the host's memory is for)."""
    text = (UNITS / f"{service}.service").read_text()
    for key in ("MemoryHigh", "MemoryMax", "TasksMax"):
        assert re.search(rf"^{key}=\d+[KMG]?$", text, re.MULTILINE), f"{service}: no {key}="


def test_the_provisioner_reaches_the_runtime_subnet_alone():
    """Its one use of IP is the runtimes' health: a provisioner made to fetch a URL (by a bug,
    or a poisoned label) reaches neither the host's services nor the LAN nor the internet."""
    text = (UNITS / "sudo-provisioner.service").read_text()
    assert re.findall(r"^IPAddressDeny=(.*)$", text, re.MULTILINE) == ["any"]
    assert re.findall(r"^IPAddressAllow=(.*)$", text, re.MULTILINE) == [RuntimeSettings().subnet]


def test_the_firewall_stands_again_whenever_docker_or_nftables_restarts():
    """sudo-firewall.service as packaged, under a real systemd, with stand-ins for the units it
    follows and for `sudoctl firewall apply` (which prints a line): applied when Docker starts,
    again when Docker restarts or starts again, and when nftables.service (whose
    `flush ruleset` empties the host's tables) restarts or reloads; and before the provisioner."""
    stand_in = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\nExecReload=/bin/true\n"
    firewall = (UNITS / "sudo-firewall.service").read_text()
    units = {
        "docker.service": stand_in,
        "nftables.service": stand_in,
        "sudo-firewall.service": firewall.replace(
            "/opt/venvs/sudo/bin/sudoctl firewall apply", "/bin/echo applied"
        ),
        "sudo-provisioner.service": (UNITS / "sudo-provisioner.service").read_text(),
        "sudo-provisioner.socket": (UNITS / "sudo-provisioner.socket").read_text(),
    }
    with systemd_box(units) as (box, _):

        def run(*command: str) -> str:
            code, output = box.exec_run(list(command))
            assert code == 0, output
            return output.decode()

        def applied(times: int) -> None:
            """The stand-in ran `times` times in all (a unit that is only wanted starts on its own time)."""
            deadline = time.monotonic() + 20
            while (
                seen := run("journalctl", "-u", "sudo-firewall.service", "-o", "cat").count("applied\n")
            ) < times:
                assert time.monotonic() < deadline, seen
                time.sleep(0.1)
            assert seen == times

        run("systemctl", "enable", "sudo-firewall.service")
        run("systemctl", "start", "docker.service", "nftables.service")
        applied(1)
        for step, times in (
            (("restart", "docker.service"), 2),
            (("stop", "docker.service"), 2),
            (("start", "docker.service"), 3),
            (("reload", "nftables.service"), 4),
            (("restart", "nftables.service"), 5),
        ):
            run("systemctl", *step)
            applied(times)
        # The provisioner's unit requires the firewall and comes after it.
        order = run("systemctl", "show", "-p", "Requires", "-p", "After", "sudo-provisioner.service")
        assert "sudo-firewall.service" in order.split("Requires=")[1].split("\n")[0]
        assert "sudo-firewall.service" in order.split("After=")[1].split("\n")[0]
