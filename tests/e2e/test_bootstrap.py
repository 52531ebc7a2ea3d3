"""proxmox/bootstrap.sh run for real, twice, in a Debian 12 with systemd as PID 1.

The machine is a container of the e2e image (tests/machines.py), as the Proxmox LXC would be
after apply-features.sh. What needs the Proxmox node or the internet is replaced by its local
equivalent, and only that:
- Docker: the machine is given the real engine's socket (as in test_install.py), so `docker
  info` answers and the bootstrap leaves Docker alone instead of installing docker.io;
- the Sudo packages: dist/*.deb (SUDO_DEBS), not a repository;
- the Hermes image: the locally built one (HERMES_IMAGE=sudo-hermes:0.19.0 is present, so it is
  not pulled), tagged under a name of this test's own, as upstream's would be;
- livekit-server: a stand-in executable (LIVEKIT_BINARY) that reads the config it is given,
  says which port and key it found, answers "OK" on that port as livekit-server does, and
  speaks LiveKit's worker protocol there (tests/livekit_dispatch.py) with the config's key pair;
- TLS: Caddy's own CA (TLS=internal), on free ports, since no certificate authority is reachable;
  for the voice bridge, the public names resolve to 127.0.0.1 and that CA is trusted.
Caddy itself is Debian's, which the e2e image holds (its own unit masked) for sudo-web. The
machine has sudo.toml written first, with ports and a runtime network of its own (it shares the
host's network). The packages come from dist/ (SUDO_E2E_DEBS names another directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from machines import IMAGE, Machine, start_machine
from ports import free_port
from twilio.request_validator import RequestValidator

ROOT = Path(__file__).resolve().parents[2]
DEBS = Path(os.environ.get("SUDO_E2E_DEBS", ROOT / "dist"))
HERMES_IMAGE = os.environ.get("HERMES_IMAGE", "sudo-hermes:0.19.0")
SRC = "/opt/sudo-src"
BOOTSTRAP = [f"{SRC}/proxmox/bootstrap.sh", "/root/sudo-bootstrap.conf"]

STANDIN = r'''#!/opt/venvs/sudo/bin/python
"""Stands in for livekit-server in tests/e2e/test_bootstrap.py: what the voice bridge needs of
one apart from media, its worker protocol (tests/livekit_dispatch.py), with the key pair of the
config it is given, on the port that config names; GET / answers "OK" as livekit-server does."""
import asyncio
import re
import sys

sys.path.insert(0, "/opt/sudo-src/tests")
from aiohttp import web
from livekit_dispatch import AgentDispatch

if sys.argv[1:] == ["--version"]:
    print("livekit-server version 0.0.0-standin")
    sys.exit(0)
if len(sys.argv) != 3 or sys.argv[1] != "--config":
    sys.exit("usage: livekit-server --config FILE")
text = open(sys.argv[2]).read()
port = int(re.search(r"^port: (\d+)$", text, re.M).group(1))
((key, secret),) = re.findall(r"^  (\w+): (\S+)$", text.split("\nkeys:\n", 1)[1], re.M)
print(f"stand-in livekit-server: config {sys.argv[2]}, port {port}, keys {key}", flush=True)


async def ok(request):
    return web.Response(text="OK")


async def main():
    dispatch = AgentDispatch(key, secret)
    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/agent", dispatch.agent)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    said = 0
    while True:
        await asyncio.sleep(0.5)
        for reason in dispatch.refused[said:]:
            print(f"refused a worker: {reason}", flush=True)
        said = len(dispatch.refused)
        if dispatch.registered.is_set():
            dispatch.registered.clear()
            print(f"worker registered: {[w.registration.agent_name for w in dispatch.workers]}", flush=True)


asyncio.run(main())
'''

# What must be the same after a second run: files, packages, settings (with the time each was
# written), the image tag, and the main processes (nothing restarted).
FINGERPRINT = """
cd /
sha256sum run/sudo-web/Caddyfile etc/livekit/livekit.yaml usr/local/bin/livekit-server \
    etc/systemd/system/livekit-server.service etc/systemd/system/sudo-web.service.d/bootstrap.conf \
    etc/systemd/system/sudo-provisioner.service.d/hermes-image.conf root/sudo-admin-password
stat -c '%n %a %U %Y' etc/systemd/system/sudo-web.service.d/bootstrap.conf etc/livekit/livekit.yaml \
    usr/local/bin/livekit-server etc/systemd/system/livekit-server.service root/sudo-admin-password
dpkg-query -W 'sudo-*' caddy docker.io
systemctl show -p MainPID --value sudo-web livekit-server sudo-api sudo-gateway
/opt/venvs/sudo/bin/python -c 'import sqlite3; print(sqlite3.connect("/var/lib/sudo/sudo.db").execute(
    "SELECT key, updated_at FROM settings ORDER BY key").fetchall())'
/opt/venvs/sudo/bin/sudoctl admins
docker image inspect -f '{{{{.Id}}}}' {tag}
"""


class Lxc(Machine):
    """The container as the bootstrap finds it, and what the bootstrap printed."""

    def __init__(self, machine: Machine, tag: str) -> None:
        super().__init__(machine.container)
        self.tag = tag
        self.https = free_port()
        self.livekit_port = free_port()
        self.outputs: list[str] = []

    def bootstrap(self, config: str = BOOTSTRAP[1]) -> tuple[int, str]:
        code, out = self.container.exec_run([BOOTSTRAP[0], config])
        return code, out.decode(errors="replace")

    def curl(self, host: str, path: str, *args: str) -> str:
        """An HTTPS request through Caddy, as to the public name (Caddy's own CA, hence -k)."""
        url = f"https://{host}:{self.https}{path}"
        quoted = " ".join(shlex.quote(a) for a in args)
        return self.sh(f"curl -sk --max-time 20 --resolve {host}:{self.https}:127.0.0.1 {quoted} {url}")

    def secret_values(self) -> dict[str, str]:
        livekit = self.sh("sed -n 's/^  \\(API[0-9a-f]*\\): //p' /etc/livekit/livekit.yaml")
        return {
            "admin password": self.sh("cat /root/sudo-admin-password"),
            "LiveKit secret": livekit,
            "host secret": self.sh("cat /etc/sudo/credentials/host-secret"),
            "service token": self.sh("cat /etc/sudo/credentials/service-token"),
        }


def settings_file(values: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


@pytest.fixture(scope="module")
def lxc() -> Iterator[Lxc]:
    client = docker.from_env()
    if len(sorted(DEBS.glob("sudo-*.deb"))) < 6:
        pytest.fail(f"no packages in {DEBS}: run `make deb` first")
    for image in (IMAGE, HERMES_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} is missing: run `make e2e-image hermes-image` first")
    tag = secrets.token_hex(3)
    network = f"sudo-bootstrap-{tag}"
    machine: Machine | None = None
    try:
        machine = start_machine(
            f"sudo-bootstrap-{tag}",
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                "/var/run/docker.sock": {"bind": "/run/docker.sock", "mode": "rw"},
                str(DEBS): {"bind": "/debs", "mode": "ro"},
                str(ROOT): {"bind": SRC, "mode": "ro"},
            },
        )
        box = Lxc(machine, f"sudo-bootstrap-{tag}:0.19.0")
        box.sh(f"groupmod -g {os.stat('/var/run/docker.sock').st_gid} docker")
        api, service = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        box.write(
            "/etc/sudo/sudo.toml",
            f"""[runtime]
network = "{network}"
bridge = "sudo-b{tag}"
subnet = "10.217.{secrets.randbelow(250)}.0/24"
[gateway]
port = {free_port()}
metrics = "127.0.0.1:{free_port()}"
[api]
listen = "{api}"
service_listen = "{service}"
metrics = "127.0.0.1:{free_port()}"
[voice]
api_url = "http://{service}"
http = "127.0.0.1:{free_port()}"
metrics = "127.0.0.1:{free_port()}"
""",
        )
        box.write("/root/livekit-server", STANDIN)
        box.sh("chmod 755 /root/livekit-server")
        box.write(
            "/root/sudo-bootstrap.conf",
            "# as an operator would write it, from proxmox/bootstrap.conf.example\n"
            + settings_file(
                {
                    "SUDO_DOMAIN": "sudo.test",
                    "LIVEKIT_DOMAIN": "voice.test",
                    "TLS": "internal",
                    "HTTP_PORT": str(free_port()),
                    "HTTPS_PORT": str(box.https),
                    "SUDO_DEBS": "/debs",
                    "HERMES_IMAGE": HERMES_IMAGE,
                    "HERMES_TAG": box.tag,
                    "LIVEKIT_BINARY": "/root/livekit-server",
                    "LIVEKIT_PORT": str(box.livekit_port),
                    "ADMIN_EMAIL": "admin@sudo.test",
                }
            ),
        )
        yield box
    finally:
        if machine is not None:
            machine.container.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network).remove()
        # The packaged firewall's table, on the real host whose network the machine shares.
        subprocess.run(["nft", "delete", "table", "inet", f"sudo-b{tag}"], capture_output=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(f"sudo-bootstrap-{tag}:0.19.0")


# In order, on one machine: refused settings, the first run, the second, then what it set up.


def test_bad_settings_stop_it_before_anything_changes(lxc: Lxc):
    for line, says in (
        ("ADMIN_MAIL=admin@sudo.test", "unknown setting ADMIN_MAIL (the settings are those of"),
        ("TLS=letsencrypt", "TLS must be acme or internal (got 'letsencrypt')"),
        ("LIVEKIT_BINARY=", "set LIVEKIT_SHA256 to the sha256 of livekit_1.9.1_linux_amd64.tar.gz"),
        ("SUDO_DEBS=/nowhere", "holds no sudo-server_*.deb: copy the .debs of `make deb`"),
    ):
        lxc.sh(f"(cat /root/sudo-bootstrap.conf; echo {shlex.quote(line)}) > /root/bad.conf")
        code, out = lxc.bootstrap("/root/bad.conf")
        assert code == 1 and says in out, out
    # One package twice in SUDO_DEBS: refused before apt is asked anything.
    lxc.sh("mkdir /root/two && cp /debs/sudo-*.deb /root/two/")
    lxc.sh("cp /debs/sudo-server_*.deb /root/two/sudo-server_0.deb")
    lxc.sh("(cat /root/sudo-bootstrap.conf; echo SUDO_DEBS=/root/two) > /root/bad.conf")
    code, out = lxc.bootstrap("/root/bad.conf")
    assert code == 1 and "holds sudo-server twice (0.1.0 and 0.1.0): keep only one version there" in out, out
    code, out = lxc.bootstrap("/root/missing.conf")
    assert code == 1 and "no such file: copy proxmox/bootstrap.conf.example there" in out
    assert lxc.sh("dpkg-query -W sudo-core 2>&1 || true").startswith("dpkg-query: no packages found")
    untouched = lxc.sh("ls /etc/livekit /etc/systemd/system/sudo-web.service.d 2>&1 || true")
    assert untouched.count("No such file") == 2, untouched


def test_the_first_run_sets_up_the_host(lxc: Lxc):
    started = time.monotonic()
    code, out = lxc.bootstrap()
    lxc.outputs.append(out)
    assert code == 0, out
    print(f"first bootstrap run: {time.monotonic() - started:.0f} s")
    assert "docker info answers: Docker left as it is (unchanged)" in out
    for done in (
        "installed sudo-api=",
        f"tagged {HERMES_IMAGE} as {lxc.tag}",
        "installed /usr/local/bin/livekit-server from /root/livekit-server",
        "wrote /etc/livekit/livekit.yaml with a new key pair (root only)",
        "livekit.api_secret set",
        "sudo-web set for sudo.test and voice.test (TLS internal)",
        f"sudo-web serves https://sudo.test:{lxc.https} and wss://voice.test:{lxc.https}",
        "created admin admin@sudo.test; the password is in /root/sudo-admin-password (root only)",
    ):
        assert done in out, out
    assert re.search(r"bootstrap: done, \d+ change\(s\)", out)


def test_a_second_run_changes_nothing(lxc: Lxc):
    fingerprint = FINGERPRINT.format(tag=lxc.tag)
    before = lxc.sh(fingerprint)
    code, out = lxc.bootstrap()
    lxc.outputs.append(out)
    assert code == 0, out
    assert out.rstrip().endswith("bootstrap: done, nothing changed"), out
    assert "admin admin@sudo.test exists: left alone (unchanged)" in out
    assert lxc.sh(fingerprint) == before


def test_the_units_run(lxc: Lxc):
    for unit in (
        "sudo.target",
        "sudo-api.service",
        "sudo-gateway.service",
        "sudo-provisioner.socket",
        "sudo-reaper.timer",
        "sudo-voice-bridge.service",
        "livekit-server.service",
        "sudo-web.service",
    ):
        # The voice bridge may still be loading its VAD model (it is Type=notify).
        lxc.wait(lambda u=unit: lxc.state(u) == "active", 60, unit)
    assert lxc.sh("systemctl is-enabled livekit-server.service sudo-web.service") == "enabled\nenabled"


def test_livekit_server_runs_with_the_generated_config(lxc: Lxc):
    assert lxc.sh("stat -c '%a %U' /etc/livekit/livekit.yaml") == "600 root"
    config = lxc.sh("cat /etc/livekit/livekit.yaml")
    (key,) = re.findall(r"^  (API[0-9a-f]{12}): [0-9a-f]{64}$", config, re.M)
    assert f"port: {lxc.livekit_port}\n" in config and "port_range_start: 50000" in config
    # Our unit, handing the config over as a credential to a process of a dynamic user.
    lxc.sh(f"cmp /etc/systemd/system/livekit-server.service {SRC}/units/livekit-server.service")
    pid = lxc.sh("systemctl show -p MainPID --value livekit-server.service")
    argv = lxc.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert argv.endswith(
        "/usr/local/bin/livekit-server --config /run/credentials/livekit-server.service/livekit.yaml"
    )
    assert 61184 <= int(lxc.sh(f"stat -c %u /proc/{pid}")) <= 65519, "a dynamic user's uid"
    said = f"port {lxc.livekit_port}, keys {key}"
    assert said in lxc.sh("journalctl -u livekit-server --no-pager")


def test_sudo_web_serves_both_names(lxc: Lxc):
    caddyfile = lxc.sh("cat /run/sudo-web/Caddyfile")
    assert f"https_port {lxc.https}" in caddyfile and caddyfile.count("\ttls internal\n") == 2
    assert f"reverse_proxy 127.0.0.1:{lxc.livekit_port}" in caddyfile
    api = lxc.sh(
        "/opt/venvs/sudo/bin/python -c 'from sudo_core import config; print(config.load().api.listen)'"
    )
    assert f"reverse_proxy {api}" in caddyfile, "to sudo-api where sudo.toml says it listens"
    health = lxc.wait(
        lambda: lxc.curl("sudo.test", "/healthz", "-w", " %{http_code}"), 60, "sudo-api through Caddy"
    )
    assert health.endswith(" 200"), health
    assert lxc.curl("voice.test", "/") == "OK", "LiveKit's signalling through Caddy"


def test_the_admin_settings_hold_the_livekit_server(lxc: Lxc):
    config = lxc.sh("cat /etc/livekit/livekit.yaml")
    key, secret = re.search(r"^  (API[0-9a-f]+): ([0-9a-f]+)$", config, re.M).groups()
    url = f"wss://voice.test:{lxc.https}"
    listed = lxc.sh("/opt/venvs/sudo/bin/sudoctl settings list").splitlines()
    assert f"livekit.url = {url}" in listed and f"livekit.api_key = {key}" in listed
    assert (
        "livekit.api_secret = set" in listed
        and f"twilio.public_url = https://sudo.test:{lxc.https}" in listed
    )
    # The secret itself, as the voice bridge is given it by sudo-api: on its loopback service
    # listener, where the bridge's default voice.api_url points, and never through Caddy.
    token = lxc.sh("cat /etc/sudo/credentials/service-token")
    auth = shlex.quote(f"Authorization: Bearer {token}")
    service = lxc.sh(
        "/opt/venvs/sudo/bin/python -c"
        " 'from sudo_core import config; print(config.load().api.service_listen)'"
    )
    server = json.loads(lxc.sh(f"curl -s --max-time 20 -H {auth} http://{service}/v1/service/livekit"))
    assert server == {"url": url, "api_key": key, "api_secret": secret}
    public = lxc.curl(
        "sudo.test", "/v1/service/livekit", "-H", f"Authorization: Bearer {token}", "-w", " %{http_code}"
    )
    assert public.endswith(" 404"), public
    # And the bridge took them up.
    lxc.wait(
        lambda: url in lxc.sh("systemctl show -p StatusText --value sudo-voice-bridge"),
        90,
        "the voice bridge to use the LiveKit settings",
    )


def test_the_voice_bridge_registers_with_livekit_through_caddy(lxc: Lxc):
    """The URL, key and secret agree end to end: the bridge signs its token with Sudo's settings,
    reaches LiveKit through Caddy at the public name, and the server checks the token with the
    key pair of its own config."""
    # This machine's DNS and trust, as an operator with TLS=internal gives them to the host.
    lxc.sh("echo '127.0.0.1 sudo.test voice.test' >> /etc/hosts")
    lxc.sh(
        "cp /var/lib/sudo-web/caddy/pki/authorities/local/root.crt"
        " /usr/local/share/ca-certificates/caddy-local.crt && update-ca-certificates >/dev/null 2>&1"
    )
    lxc.sh("systemctl restart sudo-voice-bridge.service")
    url = f"wss://voice.test:{lxc.https}"
    lxc.wait(
        lambda: (
            f"registered with LiveKit at {url}"
            in lxc.sh("systemctl show -p StatusText --value sudo-voice-bridge")
        ),
        120,
        "the voice bridge to register with LiveKit",
    )
    lxc.wait(
        lambda: "worker registered: ['sudo-voice']" in lxc.sh("journalctl -u livekit-server --no-pager"),
        10,
        "the stand-in to log the registration",
    )


def test_the_admin_logs_in_with_the_generated_password(lxc: Lxc):
    assert lxc.sh("stat -c '%a %U' /root/sudo-admin-password") == "600 root"
    password = lxc.sh("cat /root/sudo-admin-password")
    assert len(password) >= 20
    body = json.dumps({"email": "admin@sudo.test", "password": password})
    login = json.loads(
        lxc.curl(
            "sudo.test", "/v1/auth/login", "-X", "POST", "-H", "Content-Type: application/json", "-d", body
        )
    )
    assert "token" in login, f"{login}\n{lxc.journal()}"
    me = json.loads(lxc.curl("sudo.test", "/v1/me", "-H", f"Authorization: Bearer {login['token']}"))
    assert me["account"]["email"] == "admin@sudo.test" and me["account"]["is_admin"] is True
    wrong = lxc.curl(
        "sudo.test",
        "/v1/auth/login",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"email": "admin@sudo.test", "password": "not the password"}),
    )
    assert wrong == "401"


def test_twilio_webhooks_verify_through_caddy(lxc: Lxc):
    """Twilio signs over the public URL; sudo-api rebuilds it from Caddy's X-Forwarded headers."""
    auth_token = secrets.token_hex(16)
    lxc.sh(f"printf '%s\\n' {auth_token} | /opt/venvs/sudo/bin/sudoctl settings set twilio.auth_token")
    params = {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": "delivered"}
    form = "&".join(f"{k}={v}" for k, v in params.items())
    url = f"https://sudo.test:{lxc.https}/v1/whatsapp/status"

    def post(signature: str) -> str:
        return lxc.curl(
            "sudo.test", "/v1/whatsapp/status", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", f"X-Twilio-Signature: {signature}", "-d", form,
        )  # fmt: skip

    validator = RequestValidator(auth_token)
    assert post(validator.compute_signature(url, params)) == "200"
    assert post(validator.compute_signature(url.replace("https:", "http:"), params)) == "403"
    assert post("") == "403"


def test_the_provisioner_runs_the_tagged_image(lxc: Lxc):
    client = docker.from_env()
    assert client.images.get(lxc.tag).id == client.images.get(HERMES_IMAGE).id
    environment = lxc.sh("systemctl show -p Environment --value sudo-provisioner.service")
    assert f"SUDO_RUNTIME_IMAGE={lxc.tag}" in environment.split()


# A newer build of the same packages, as dpkg sees an upgrade: the same files, a higher version.
NEWER = """
set -e
rm -rf /root/newer && mkdir /root/newer && cd /root/newer
for deb in /debs/sudo-*.deb; do
    old=$(dpkg-deb -f "$deb" Version)
    dir=$(basename "$deb" .deb)
    dpkg-deb -R "$deb" "$dir"
    sed -i -e "s/^Version: .*/Version: $old+up1/" -e "s/(= $old)/(= $old+up1)/g" "$dir/DEBIAN/control"
    dpkg-deb --root-owner-group -Znone -b "$dir" "$dir+up1.deb" >/dev/null
    rm -rf "$dir"
done
"""


def test_an_upgrade_is_the_same_command_with_newer_packages(lxc: Lxc):
    kept = (
        "cd / && sha256sum etc/livekit/livekit.yaml etc/sudo/credentials/* root/sudo-admin-password"
        " etc/systemd/system/sudo-web.service.d/bootstrap.conf run/sudo-web/Caddyfile"
    )
    before = lxc.sh(kept), lxc.sh("/opt/venvs/sudo/bin/sudoctl settings list")
    api_pid = lxc.sh("systemctl show -p MainPID --value sudo-api.service")
    lxc.sh(NEWER)
    lxc.sh("sed -i 's|^SUDO_DEBS=.*|SUDO_DEBS=/root/newer|' /root/sudo-bootstrap.conf")
    code, out = lxc.bootstrap()
    lxc.outputs.append(out)
    assert code == 0, out
    assert re.search(r"installed sudo-api=0.1.0\+up1 sudo-core=0.1.0\+up1 ", out), out
    assert lxc.sh("dpkg-query -W -f '${Version}' sudo-core sudo-api") == "0.1.0+up10.1.0+up1"
    assert (lxc.sh(kept), lxc.sh("/opt/venvs/sudo/bin/sudoctl settings list")) == before
    lxc.wait(lambda: lxc.state("sudo-api.service") == "active", 60, "sudo-api after the upgrade")
    assert lxc.sh("systemctl show -p MainPID --value sudo-api.service") != api_pid, "restarted on upgrade"
    code, out = lxc.bootstrap()
    lxc.outputs.append(out)
    assert code == 0 and out.rstrip().endswith("bootstrap: done, nothing changed"), out


def test_no_secret_is_printed(lxc: Lxc):
    assert len(lxc.outputs) == 4
    for name, value in lxc.secret_values().items():
        assert len(value) >= 20, name
        for out in lxc.outputs:
            assert value not in out, f"the {name} was printed"
