"""A whole Sudo control plane for tests and benchmarks, built from the real parts.

The real sudo-provisioner and sudo-gateway run as subprocesses against the real Docker engine
and the locally built Hermes image; only the LLM provider is a stand-in (tests/llm_stub.py).
Each stack has its own state directory, systemd-style credentials directory, runtime network
and subnet, so it never touches another installation's containers on the same engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
from ports import free_port, worker_slice

from sudo_core import config
from sudo_core.db import Database, Family
from sudo_core.families import api_key_for, runtime_name, volume_name
from sudoctl import firewall

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
IMAGE = os.environ.get("HERMES_IMAGE", "sudo-hermes:0.19.0")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def unused_subnet(client: docker.DockerClient) -> str:
    taken = {
        cfg.get("Subnet")
        for net in client.api.networks()
        for cfg in (net.get("IPAM") or {}).get("Config") or []
    }
    low, high = worker_slice(0, 256)  # concurrent pytest-xdist workers never pick the same
    while True:
        candidate = f"10.214.{random.randrange(low, high)}.0/24"
        if candidate not in taken:
            return candidate


class Stack:
    def __init__(self, root: Path, **overrides: dict) -> None:
        self.root = root
        self.docker = docker.from_env()
        try:
            self.docker.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            raise RuntimeError(f"image {IMAGE} is missing: run `make hermes-image` first") from None
        tag = secrets.token_hex(3)
        self.network = f"sudo-test-{tag}"
        self.creds = root / "credentials"
        self.creds.mkdir(parents=True)
        self.secret = secrets.token_hex(32)
        self.llm_key = f"sk-GLOBAL-{secrets.token_hex(16)}"
        (self.creds / "host-secret").write_text(self.secret + "\n")
        (self.creds / "llm-api-key").write_text(self.llm_key + "\n")
        self.service_token = secrets.token_hex(32)
        (self.creds / "service-token").write_text(self.service_token + "\n")
        self.llm_log = root / "llm-requests.jsonl"
        self.llm_keys = root / "llm-keys"
        self.llm_keys.write_text(self.llm_key + "\n")
        self.socket = root / "provisioner.sock"
        self.processes: dict[str, subprocess.Popen] = {}
        self._llm_port = self._start_llm()
        sections: dict[str, dict] = {
            "core": {"state_dir": str(root / "state"), "log_level": "DEBUG"},
            "provisioner": {"socket": str(self.socket), "health_timeout_sec": 90.0},
            "runtime": {
                "image": IMAGE,
                "network": self.network,
                "bridge": f"sudo-t{tag}",
                "subnet": unused_subnet(self.docker),
                "memory": "768m",
            },
            "gateway": {"port": free_port(), "metrics": f"127.0.0.1:{free_port()}"},
            "llm": {"base_url": f"http://127.0.0.1:{self._llm_port}/v1", "model": "family-model"},
            "api": {
                "listen": f"127.0.0.1:{free_port()}",
                "service_listen": f"127.0.0.1:{free_port()}",
                "metrics": f"127.0.0.1:{free_port()}",
                "secure_cookies": False,  # the tests speak plain HTTP to 127.0.0.1
                "heartbeat_flush_sec": 0.5,
                "warm_up_jitter_sec": 0.5,
                "watch_interval_sec": 1.0,
                "shutdown_grace_sec": 60.0,
            },
        }
        for section, values in overrides.items():
            sections[section] = sections.get(section, {}) | values
        self.config_path = root / "sudo.toml"
        self.config_path.write_text(_toml(sections))
        self.env = os.environ | {
            "SUDO_CONFIG": str(self.config_path),
            "CREDENTIALS_DIRECTORY": str(self.creds),
            "MALLOC_ARENA_MAX": "2",  # as the units set it
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.settings = config.load(self.env)
        self.db = Database(self.settings.core.database_path)
        # What sudo-firewall.service does before the provisioner may start (the tests run as root).
        firewall.apply(self.settings)

    # processes

    def _spawn(self, name: str, argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env or self.env, stdout=log, stderr=log, **kw)
        self.processes[name] = proc
        return proc

    def _start_llm(self) -> int:
        port_file = self.root / "llm.port"
        self._spawn(
            "llm",
            [
                sys.executable,
                str(HERE / "llm_stub.py"),
                "--port-file",
                str(port_file),
                "--log",
                str(self.llm_log),
                "--keys",
                str(self.llm_keys),
            ],
            env=dict(os.environ),
        )
        return int(wait_for(lambda: port_file.exists() and port_file.read_text(), 15, "LLM stub"))

    def start_twilio(self) -> dict[str, str]:
        """The Twilio stand-in (started once); the admin settings that point sudo-api at it."""
        if "twilio" in self.processes:
            return self.twilio_settings
        account, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
        port_file = self.root / "twilio.port"
        self.twilio_log = self.root / "twilio-messages.jsonl"
        argv = [sys.executable, str(HERE / "twilio_stub.py"), "--port-file", str(port_file)]
        argv += ["--log", str(self.twilio_log), "--account", account, "--token", token]
        self._spawn("twilio", argv, env=dict(os.environ))
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text(), 15, "Twilio stub"))
        self.twilio_settings = {
            "twilio.account_sid": account,
            "twilio.auth_token": token,
            "twilio.whatsapp_from": "+14155550100",
            "twilio.api_base": f"http://127.0.0.1:{port}",
        }
        return self.twilio_settings

    def twilio_messages(self) -> list[dict]:
        log = getattr(self, "twilio_log", None)
        if log is None or not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line]

    def start_gateway(self) -> None:
        self._spawn("gateway", [str(BIN / "sudo-gateway")])
        host, _, port = self.settings.gateway.metrics.rpartition(":")
        wait_for(lambda: _connects(host, int(port)), 15, "the gateway's metrics port")

    def start_provisioner(self, extra_env: dict | None = None, name: str = "provisioner"):
        """Start sudo-provisioner --bind; extra_env may point a second one at its own socket."""
        env = self.env | (extra_env or {})
        proc = self._spawn(name, [str(BIN / "sudo-provisioner"), "--bind"], env=env)
        sock = Path(env.get("SUDO_PROVISIONER_SOCKET", self.socket))
        wait_for(lambda: _unix_connects(sock), 30, f"the {name} socket")
        return proc

    @property
    def llm_url(self) -> str:
        """The LLM stand-in, for tests that set its knobs (/_stub/...)."""
        return f"http://127.0.0.1:{self._llm_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api.listen}"

    @property
    def service_url(self) -> str:
        """sudo-api's loopback service listener: the voice bridge's /v1/service lookups."""
        return f"http://{self.settings.api.service_listen}"

    def start_api(self, extra_env: dict | None = None) -> subprocess.Popen:
        proc = self._spawn("api", [str(BIN / "sudo-api")], env=self.env | (extra_env or {}))
        for address in (self.settings.api.listen, self.settings.api.service_listen):
            host, _, port = address.rpartition(":")
            wait_for(lambda h=host, p=port: _connects(h, int(p)) or proc.poll() is not None, 30, "sudo-api")
        if proc.poll() is not None:
            raise RuntimeError(f"sudo-api exited: {self.log_of('api')[-2000:]}")
        return proc

    def stop(self, name: str, sig: int = 15) -> None:
        proc = self.processes.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_of(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    # families and runtimes

    def new_family(self, name: str = "Test") -> Family:
        return self.db.create_family(name)

    def set_last_active(self, family: uuid.UUID, at: float) -> None:
        """Backdate a family's activity (touch_family never moves it backwards)."""
        with contextlib.closing(sqlite3.connect(self.settings.core.database_path)) as conn, conn:
            conn.execute("UPDATE families SET last_active_at = ? WHERE id = ?", (at, str(family)))

    def api_key(self, family: uuid.UUID) -> str:
        return api_key_for(self.secret.encode(), family)

    def container(self, family: uuid.UUID):
        try:
            return self.docker.containers.get(runtime_name(family))
        except docker.errors.NotFound:
            return None

    def on_volume(self, family: uuid.UUID, script: str, *args: str, mode: str = "ro") -> bytes:
        """Run a shell script on the family's data volume (at /opt/data) as the agent's user, in
        a throwaway container of the runtime image with no network; its output."""
        return self.docker.containers.run(
            self.settings.runtime.image,
            ["-c", script, *args],
            entrypoint=["sh"],
            user="10000:10000",
            volumes={volume_name(family): {"bind": "/opt/data", "mode": mode}},
            network_mode="none",
            labels={"sudo.scope": self.network},
            remove=True,
        )

    def containers(self) -> list:
        return self.docker.containers.list(all=True, filters={"label": f"sudo.scope={self.network}"})

    def llm_requests(self, path: str | None = "/v1/chat/completions") -> list[dict]:
        """What the LLM stand-in received at `path` (its chat completions unless told; None: all)."""
        if not self.llm_log.exists():
            return []
        requests = [json.loads(line) for line in self.llm_log.read_text().splitlines() if line]
        return [r for r in requests if path is None or r.get("path") == path]

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        families = [f.id for f in self.db.list_families()]
        for container in self.containers():
            container.remove(force=True)
        for family in families:
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.containers.get(runtime_name(family)).remove(force=True)
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.volumes.get(volume_name(family)).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            self.docker.networks.get(self.network).remove()
        firewall.remove(self.settings)
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_host(root: Path, **overrides: dict) -> Iterator[Stack]:
    """A whole host as its packages run it: the gateway, the provisioner and sudo-api, stopped and
    their containers removed afterwards."""
    stack = Stack(root, **overrides)
    try:
        stack.start_gateway()
        stack.start_provisioner()
        stack.start_api()
        yield stack
    finally:
        stack.close()


class Notifications:
    """The NOTIFY_SOCKET end, read continuously as systemd does."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.sock.recv(4096):
                self.seen += data.decode().split("\n")

    def wait_for(self, message: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.startswith(message) for m in self.seen):
                return True
            time.sleep(0.05)
        return False


def activate(env: dict, listener: socket.socket, log=subprocess.DEVNULL) -> subprocess.Popen:
    """Start sudo-provisioner as systemd does for its .socket unit: the listening socket as
    fd 3, LISTEN_FDS=1 and LISTEN_PID naming the service's own pid."""
    fd = listener.fileno()
    return subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", str(BIN / "sudo-provisioner")],
        env=env | {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "provisioner"},
        pass_fds=(fd, 3),  # 3 too: close_fds runs after the dup2 below
        preexec_fn=lambda: os.dup2(fd, 3),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _unix_connects(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        return True
    return False


def _toml(sections: dict[str, dict]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
