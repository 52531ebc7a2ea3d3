"""Install the built .debs into a Debian 12 with systemd as PID 1 and use the result.

The "host" is a container from tests/images/e2e (systemd, the docker CLI) on the host's network,
given the real Docker engine's socket, so the family containers it starts are real ones next to
it. Only the LLM provider is a stand-in (tests/llm_stub.py, on 127.0.0.1).

Two details come from running Docker's client inside a container: the docker group inside must
have the socket's group id, and the plugins directory must have the same path on both sides (the
engine resolves bind mounts on the real host), so the test points runtime.plugins_dir at a
shared directory outside /tmp (the units have a private /tmp).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("E2E_IMAGE", "sudo-e2e:bookworm")
HERMES_IMAGE = os.environ.get("HERMES_IMAGE", "sudo-hermes:0.19.0")
PLUGINS = "/opt/venvs/sudo/lib/python3.11/site-packages/sudo_provisioner/plugins"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """The installed system, driven as an operator would."""

    def __init__(self, container, api: str) -> None:
        self.container, self.api = container, api

    def sh(self, script: str, check: bool = True) -> str:
        code, out = self.container.exec_run(["sh", "-c", script])
        text = out.decode(errors="replace")
        if check:
            assert code == 0, f"{script}\n{text}"
        return text.strip()

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


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    client = docker.from_env()
    dist = sorted((ROOT / "dist").glob("*.deb"))
    if len(dist) < 6:
        pytest.fail("no packages in dist/: run `make deb` first")
    for image in (IMAGE, HERMES_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} is missing: run `make e2e-image hermes-image` first")
    tag = secrets.token_hex(3)
    shared = Path(f"/var/lib/sudo-e2e/{tag}")
    (shared / "plugins").mkdir(parents=True)
    logs = tmp_path_factory.mktemp("e2e")
    port_file = logs / "llm.port"
    llm = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/llm_stub.py"),
            "--port-file",
            str(port_file),
            "--log",
            str(logs / "llm.log"),
        ]
    )
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    network = f"sudo-e2e-{tag}"
    api = f"127.0.0.1:{free_port()}"
    config = f"""
[core]
log_level = "INFO"
[provisioner]
idle_exit_sec = 8
[runtime]
image = "{HERMES_IMAGE}"
network = "{network}"
subnet = "10.216.{secrets.randbelow(250)}.0/24"
memory = "768m"
plugins_dir = "{shared / "plugins"}"
[gateway]
port = {free_port()}
metrics = "127.0.0.1:{free_port()}"
[api]
listen = "{api}"
metrics = "127.0.0.1:{free_port()}"
secure_cookies = false
[llm]
base_url = "http://127.0.0.1:{port_file.read_text()}/v1"
model = "e2e-model"
"""
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    container = client.containers.run(
        IMAGE,
        ["sh", "-c", "mount --make-rshared / && exec /sbin/init"],
        detach=True,
        name=f"sudo-e2e-{tag}",
        network_mode="host",
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            "/var/run/docker.sock": {"bind": "/run/docker.sock", "mode": "rw"},
            str(ROOT / "dist"): {"bind": "/debs", "mode": "ro"},
            str(shared): {"bind": str(shared), "mode": "rw"},
        },
    )
    h = Host(container, api)
    try:
        h.wait(lambda: h.sh("systemctl is-system-running || true") in ("running", "degraded"), 60, "boot")
        h.sh(f"groupmod -g {socket_gid} docker && mkdir -p /etc/sudo")
        h.sh(f"cat > /etc/sudo/sudo.toml <<'EOF'{config}EOF")
        # A drop-in as an operator would write one: a quicker watchdog, for the hang test.
        h.sh(
            "mkdir -p /etc/systemd/system/sudo-api.service.d && printf '[Service]\\nWatchdogSec=4s\\n' "
            "> /etc/systemd/system/sudo-api.service.d/watchdog.conf"
        )
        h.sh(
            "apt-get install -y -q -o Dpkg::Options::=--force-confold /debs/*.deb > /tmp/apt.log 2>&1 "
            "|| { tail -n 30 /tmp/apt.log; exit 1; }"
        )
        # The engine bind-mounts plugins from the real host: give it the installed ones there.
        h.sh(f"cp -r {PLUGINS}/. {shared / 'plugins'}/ && systemctl stop sudo-provisioner.service")
        yield h
    finally:
        container.remove(force=True)
        for leftover in client.containers.list(all=True, filters={"label": f"sudo.scope={network}"}):
            volumes = [m["Name"] for m in leftover.attrs["Mounts"] if m["Type"] == "volume"]
            leftover.remove(force=True)
            for volume in volumes:
                client.volumes.get(volume).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network).remove()
        llm.terminate()
        shutil.rmtree(shared, ignore_errors=True)


def test_the_installed_system_serves_a_family(host: Host):
    assert host.state("sudo.target") == "active"
    for unit in ("sudo-api.service", "sudo-gateway.service", "sudo-provisioner.socket", "sudo-reaper.timer"):
        assert host.state(unit) == "active", unit
    # Secrets were generated at install, readable by root only.
    assert host.sh("stat -c '%a %U' /etc/sudo/credentials/host-secret") == "600 root"

    signed = host.call(
        "POST",
        "/v1/auth/signup",
        body={"email": "e2e@example.org", "password": "a long password", "name": "Eve", "family_name": "E2E"},
    )
    token = signed["token"]
    sent = host.call("POST", "/v1/chat/messages", token, {"text": "hello from the installed system"})
    message = sent["message"]["id"]

    def answered():
        history = host.call("GET", "/v1/chat/messages", token)["messages"]
        return history if any(m["id"] == message and m["status"] == "answered" for m in history) else None

    history = host.wait(answered, 180, "the family's first answer")
    assert history[-1]["role"] == "assistant" and "hello from the installed system" in history[-1]["text"]
    # The first request started the provisioner through its socket; idle, it exits again.
    host.wait(lambda: host.state("sudo-provisioner.service") == "inactive", 60, "the provisioner's idle exit")
    assert host.state("sudo-provisioner.socket") == "active"


def test_a_hung_api_is_restarted_by_the_watchdog(host: Host):
    pid = host.sh("systemctl show -p MainPID --value sudo-api.service")
    restarts = int(host.sh("systemctl show -p NRestarts --value sudo-api.service"))
    host.sh(f"kill -STOP {pid}")
    host.wait(
        lambda: (
            int(host.sh("systemctl show -p NRestarts --value sudo-api.service")) > restarts
            and host.state("sudo-api.service") == "active"
        ),
        60,
        "the watchdog to restart sudo-api",
    )
    assert host.sh("systemctl show -p MainPID --value sudo-api.service") != pid
    assert "watchdog" in host.sh("journalctl -u sudo-api --no-pager | grep -i watchdog | tail -n 1")
