"""Debian 12 machines with systemd as PID 1 (containers of the e2e image), driven as an operator would.

Shared by the end-to-end tests: tests/e2e/test_install.py installs the packages on them,
tests/e2e/test_bootstrap.py runs proxmox/bootstrap.sh on one.
"""

from __future__ import annotations

import os
import shlex
import socket
import time

import docker

IMAGE = os.environ.get("E2E_IMAGE", "sudo-e2e:bookworm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def start_machine(name: str, **options) -> Machine:
    """A container of the e2e image booting systemd, on the host's network (it reaches 127.0.0.1)."""
    container = docker.from_env().containers.run(
        IMAGE,
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
