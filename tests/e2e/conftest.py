"""The installed server the end-to-end tests use: the built .debs in a Debian 12 with systemd as
PID 1, one per test module.

The "host" is a container from tests/images/e2e (systemd, the docker CLI) on the host's network,
given the real Docker engine's socket, so the family containers it starts are real ones next to
it. Only the LLM provider is a stand-in (tests/llm_stub.py, on 127.0.0.1).

Two details come from running Docker's client inside a container: the docker group inside must
have the socket's group id, and the plugins directory must have the same path on both sides (the
engine resolves bind mounts on the real host), so the test points runtime.plugins_dir at a
shared directory outside /tmp (the units have a private /tmp). sudo-web's Caddy serves
WEB_DOMAIN on free ports, since the host's 80 and 443 are the real host's.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from machines import IMAGE, WEB_DOMAIN, Host, start_machine
from ports import free_port, worker_slice

ROOT = Path(__file__).resolve().parents[2]
HERMES_IMAGE = os.environ.get("HERMES_IMAGE", "sudo-hermes:0.19.0")
PLUGINS = "/opt/venvs/sudo/lib/python3.11/site-packages/sudo_provisioner/plugins"


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
    subnet = f"10.216.{random.randrange(*worker_slice(0, 250))}.0/24"
    api, service = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    web = free_port(), free_port()
    config = f"""
[core]
log_level = "INFO"
[provisioner]
idle_exit_sec = 8
[runtime]
image = "{HERMES_IMAGE}"
network = "{network}"
bridge = "sudo-e{tag}"
subnet = "{subnet}"
memory = "768m"
plugins_dir = "{shared / "plugins"}"
[gateway]
port = {free_port()}
metrics = "127.0.0.1:{free_port()}"
[api]
listen = "{api}"
service_listen = "{service}"
metrics = "127.0.0.1:{free_port()}"
secure_cookies = false
signup = "invite"
[voice]
api_url = "http://{service}"
[web]
domain = "{WEB_DOMAIN}"
http_port = {web[0]}
https_port = {web[1]}
[llm]
base_url = "http://127.0.0.1:{port_file.read_text()}/v1"
model = "e2e-model"
"""
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    h: Host | None = None
    try:
        machine = start_machine(
            f"sudo-e2e-{tag}",
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                "/var/run/docker.sock": {"bind": "/run/docker.sock", "mode": "rw"},
                str(ROOT / "dist"): {"bind": "/debs", "mode": "ro"},
                str(shared): {"bind": str(shared), "mode": "rw"},
            },
        )
        h = Host(machine, api, network, logs / "llm.log", web)
        h.sh(f"groupmod -g {socket_gid} docker && mkdir -p /etc/sudo")
        h.write("/etc/sudo/sudo.toml", config)
        # A drop-in as an operator would write one: a quicker watchdog, for the hang test.
        h.write("/etc/systemd/system/sudo-api.service.d/watchdog.conf", "[Service]\nWatchdogSec=4s\n")
        # The test's own runtime subnet, as an operator who changes runtime.subnet allows it.
        h.write(
            "/etc/systemd/system/sudo-provisioner.service.d/subnet.conf",
            f"[Service]\nIPAddressAllow=\nIPAddressAllow={subnet}\n",
        )
        h.install("/debs/*.deb")
        # The engine bind-mounts plugins from the real host: give it the installed ones there.
        h.sh(f"cp -r {PLUGINS}/. {shared / 'plugins'}/ && systemctl stop sudo-provisioner.service")
        yield h
    finally:
        if h is not None:
            h.container.remove(force=True)
        for leftover in client.containers.list(all=True, filters={"label": f"sudo.scope={network}"}):
            volumes = [m["Name"] for m in leftover.attrs["Mounts"] if m["Type"] == "volume"]
            leftover.remove(force=True)
            for volume in volumes:
                client.volumes.get(volume).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network).remove()
        subprocess.run(["nft", "delete", "table", "inet", f"sudo-e{tag}"], capture_output=True)
        llm.terminate()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def family(host: Host) -> str:
    """A family signed up on the installed system, by the admin's invitation (the packages'
    sign-up mode is `invite`); its API token."""
    body = {"email": "e2e@example.org", "password": "a long password", "name": "Eve", "family_name": "E2E"}
    refused = host.call("POST", "/v1/auth/signup", body=body)
    assert "invitation" in refused["error"], refused
    link = host.sh("sudoctl invite --url https://sudo.example 2>/dev/null")
    assert link.startswith("https://sudo.example/join/"), link
    signed = host.call("POST", "/v1/auth/join", body=body | {"token": link.rsplit("/", 1)[1]})
    return signed["token"]
