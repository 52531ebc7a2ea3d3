"""systemd as PID 1 in a container (image built by `tests/images/build-image systemd`), with its
system D-Bus socket shared with the test through a directory, and stand-in units installed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

IMAGE = os.environ.get("SYSTEMD_IMAGE", "sudo-systemd:bookworm")


@contextlib.contextmanager
def systemd_box(units: dict[str, str]) -> Iterator[tuple[docker.models.containers.Container, str]]:
    """The booted container, with `units` in /etc/systemd/system (loaded, none started), and the
    address of its system bus."""
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE} is missing: run `make systemd-image` first")
    shared = Path(tempfile.mkdtemp(prefix="sudo-dbus-"))
    # The flags systemd needs as PID 1 here (../shared notes): its own cgroup view, tmpfs /run.
    container = client.containers.run(
        IMAGE,
        ["sh", "-c", "mount --make-rshared / && exec /sbin/init"],
        detach=True,
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(shared): {"bind": "/run/dbus"},
        },
        tmpfs={"/run": "", "/run/lock": ""},
        network_mode="none",
    )
    try:
        deadline = time.monotonic() + 60
        while container.exec_run(["systemctl", "is-system-running"]).output.strip() not in (
            b"running",
            b"degraded",
        ):
            assert time.monotonic() < deadline, container.logs()[-2000:]
            time.sleep(0.3)
        for name, text in units.items():
            subprocess.run(
                ["docker", "exec", "-i", container.id, "sh", "-c", f"cat > /etc/systemd/system/{name}"],
                input=text.encode(),
                check=True,
            )
        code, output = container.exec_run(["systemctl", "daemon-reload"])
        assert code == 0, output
        yield container, f"unix:path={shared}/system_bus_socket"
    finally:
        container.remove(force=True)
        subprocess.run(["rm", "-rf", str(shared)], check=False)
