"""Debian 12 machines with systemd as PID 1 (containers of the e2e image), driven as an operator would.

Shared by the end-to-end tests: tests/e2e/test_install.py installs the packages on them (the
server on one, sudo-edge on another), tests/e2e/test_edge_arm64.py the Pi's package on an arm64
one, tests/e2e/test_bootstrap.py runs proxmox/bootstrap.sh on one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import docker

IMAGE = os.environ.get("E2E_IMAGE", "sudo-e2e:bookworm")
WEB_DOMAIN = "sudo.lan"  # the installed server's site (sudo-web): a LAN name, so Caddy's own CA


class Machine:
    """A Debian 12 with systemd as PID 1 (a container of the e2e image), driven as an operator would."""

    def __init__(self, container) -> None:
        self.container = container

    def sh(self, script: str, check: bool = True) -> str:
        code, out = self.container.exec_run(["sh", "-c", script])
        text = out.decode(errors="replace")
        if check:
            assert code == 0, f"{script}\n{text}"
        return text.strip()

    def write(self, path: str, text: str) -> None:
        self.sh(f"mkdir -p $(dirname {path}) && printf '%s' {shlex.quote(text)} > {path}")

    def state(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit} || true")

    def wait(self, predicate, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if result := predicate():
                return result
            time.sleep(0.5)
        raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{self.journal()}")

    def journal(self) -> str:
        return self.sh("journalctl -u 'sudo-*' --no-pager | grep -v DEBUG | tail -n 40", check=False)

    def boot(self) -> None:
        booted = ("running", "degraded")
        self.wait(lambda: self.sh("systemctl is-system-running || true") in booted, 60, "boot")

    def install(self, debs: str) -> None:
        self.sh(
            f"apt-get install -y -q -o Dpkg::Options::=--force-confold {debs} > /tmp/apt.log 2>&1 "
            "|| { tail -n 30 /tmp/apt.log; exit 1; }"
        )


def start_machine(name: str, image: str = IMAGE, **options) -> Machine:
    """A container of the e2e image (or `image`) booting systemd, on the host's network (it
    reaches 127.0.0.1)."""
    container = docker.from_env().containers.run(
        image,
        ["sh", "-c", "mount --make-rshared / && exec /sbin/init"],
        detach=True,
        name=name,
        network_mode="host",
        # NET_ADMIN: a Proxmox LXC has it over its own network; here that network is the host's.
        cap_add=["SYS_ADMIN", "NET_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        tmpfs={"/run": "", "/run/lock": ""},
        **options,
    )
    machine = Machine(container)
    try:
        machine.boot()
    except BaseException:
        container.remove(force=True)
        raise
    return machine


class Host(Machine):
    """The installed server (tests/e2e/conftest.py installs it)."""

    def __init__(
        self, machine: Machine, api: str, network: str, llm_log: Path, web: tuple[int, int] = (0, 0)
    ) -> None:
        super().__init__(machine.container)
        self.api, self.network, self.llm_log = api, network, llm_log
        self.http_port, self.https_port = web  # sudo-web's (Caddy's), on this host's network
        self.bridge = network.replace("sudo-e2e-", "sudo-e")
        self.docker = docker.from_env()

    def firewall(self) -> str:
        """The host's nftables table for this installation's bridge ("" if none): the real
        host's, since this host shares its network."""
        listed = subprocess.run(["nft", "list", "table", "inet", self.bridge], capture_output=True, text=True)
        return listed.stdout

    def runtimes(self) -> list:
        """The family containers this installation runs, as the real engine lists them."""
        return self.docker.containers.list(filters={"label": f"sudo.scope={self.network}"})

    def call(self, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
        args = [
            "curl",
            "-s",
            "-X",
            method,
            f"http://{self.api}{path}",
            "-H",
            "Content-Type: application/json",
        ]
        if token:
            args += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            args += ["-d", json.dumps(body)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
        return json.loads(out)


def status_of(machine: Machine, unit: str) -> str:
    return machine.sh(f"systemctl show -p StatusText --value {unit}")


def install_edge(pi: Machine) -> None:
    """sudo-edge's package for the machine's architecture, from dist/edge mounted at /debs/edge;
    its dependencies (espeak-ng, libasound2) from Debian's mirror, as on a Pi."""
    pi.sh("apt-get update -q > /tmp/update.log 2>&1 || { tail -n 20 /tmp/update.log; exit 1; }")
    pi.install('/debs/edge/sudo-edge_*_"$(dpkg --print-architecture)".deb')


def pair_edge(pi: Machine, host: Host, family: str) -> str:
    """Point the installed sudo-edge at the host's sudo-api, start it and pair it as a parent
    would; the pairing code it gave."""
    pi.sh(f'sed -i \'s|^url = ""|url = "http://{host.api}"|\' /etc/sudo/edge.toml')
    pi.sh("systemctl reset-failed sudo-edge.service && systemctl start sudo-edge.service")
    code = pi.wait(
        lambda: re.search(r"pairing: code (\w+)", status_of(pi, "sudo-edge")), 60, "a pairing code"
    ).group(1)
    claimed = host.call("POST", "/v1/devices/pairing/complete", family, {"code": code})
    said = pi.wait(  # the device says the family's name and a code, which the parent types back
        lambda: re.search(r"pairing with E2E: type (\d{6})", status_of(pi, "sudo-edge")),
        30,
        "the confirmation",
    ).group(1)
    confirm = {"pairing_id": claimed["pairing"]["id"], "code": said}
    host.call("POST", "/v1/devices/pairing/confirm", family, confirm)
    pi.wait(lambda: status_of(pi, "sudo-edge").startswith("paired"), 30, "the device to pair")
    return code


def heard_from(host: Host, family: str) -> list[dict]:
    """The family's devices once sudo-api has had a heartbeat from the first; [] before."""
    devices = host.call("GET", "/v1/devices", family)["devices"]
    return devices if devices and devices[0]["last_seen_at"] else []
