"""Install the built .debs into a Debian 12 with systemd as PID 1 and use the result: the
server (the `host` of tests/e2e/conftest.py) and, on a second machine, sudo-edge."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tarfile
import time
import tomllib
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker
import pyrage
import pytest
import yaml
from machines import WEB_DOMAIN, Host, heard_from, install_edge, pair_edge, start_machine, status_of
from ports import free_port
from twilio_stub import sign

ROOT = Path(__file__).resolve().parents[2]
HERMES_IMAGE = os.environ.get("HERMES_IMAGE", "sudo-hermes:0.19.0")


def volume_of(host: Host, token: str) -> str:
    """The family's data volume (named as the provisioner names it)."""
    user_id = host.call("GET", "/v1/me", token)["account"]["user_id"]
    return f"hermes-user-{uuid.UUID(user_id).hex}-data"


def chat(host: Host, token: str, text: str) -> list[dict]:
    """Send a message and wait for its answer; the history then."""
    message = host.call("POST", "/v1/chat/messages", token, {"text": text})["message"]["id"]

    def answered():
        history = host.call("GET", "/v1/chat/messages", token)["messages"]
        return history if any(m["id"] == message and m["status"] == "answered" for m in history) else None

    history = host.wait(answered, 180, f"the answer to {text!r}")
    assert history[-1]["role"] == "assistant" and text in history[-1]["text"]
    return history


# The tests below run in order, on one installed system: serve, survive a hang, reap, upgrade, purge.


def test_the_installed_system_serves_a_family(host: Host, family: str):
    assert host.state("sudo.target") == "active"
    units = ("sudo-firewall.service", "sudo-api.service", "sudo-gateway.service", "sudo-provisioner.socket")
    for unit in (*units, "sudo-reaper.timer"):
        assert host.state(unit) == "active", unit
    # The packaged firewall stands on the (real) host for this installation's bridge.
    assert f'iifname "{host.bridge}" ip daddr ' in host.firewall()
    # The voice bridge runs hardened (its VAD model loaded), reaches sudo-api's loopback service
    # listener with the service credential, and waits for the admin to name a LiveKit server.
    host.wait(
        lambda: (
            "waiting for the LiveKit settings"
            in host.sh("systemctl show -p StatusText --value sudo-voice-bridge")
        ),
        60,
        "the voice bridge to ask for its LiveKit settings",
    )
    assert host.state("sudo-voice-bridge.service") == "active"
    # Secrets were generated at install, readable by root only.
    assert host.sh("stat -c '%a %U' /etc/sudo/credentials/host-secret") == "600 root"

    chat(host, family, "hello from the installed system")
    assert len(host.runtimes()) == 1
    # The first request started the provisioner through its socket; idle, it exits again.
    host.wait(lambda: host.state("sudo-provisioner.service") == "inactive", 60, "the provisioner's idle exit")
    assert host.state("sudo-provisioner.socket") == "active"


class Browser:
    """A client of sudo-web from outside, as a family's device: WEB_DOMAIN resolves to the host,
    and Caddy's root certificate, copied from the host, is the one it trusts (no -k)."""

    def __init__(self, host: Host, ca: Path) -> None:
        self.host, self.ca = host, ca

    def args(self, scheme: str, path: str) -> list[str]:
        port = self.host.https_port if scheme == "https" else self.host.http_port
        return [
            "curl", "-sS", "--max-time", "120", "--cacert", str(self.ca),
            "--resolve", f"{WEB_DOMAIN}:{port}:127.0.0.1", f"{scheme}://{WEB_DOMAIN}:{port}{path}",
        ]  # fmt: skip

    def get(self, path: str, *options: str, scheme: str = "https", check: bool = True) -> str:
        done = subprocess.run(
            [*self.args(scheme, path), *options], capture_output=True, text=True, timeout=130
        )
        assert done.returncode == 0 or not check, done.stderr
        return done.stdout if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def browser(host: Host, tmp_path_factory: pytest.TempPathFactory) -> Browser:
    root = "/var/lib/sudo-web/caddy/pki/authorities/local/root.crt"
    ca = tmp_path_factory.mktemp("web") / "root.crt"
    ca.write_text(host.wait(lambda: host.sh(f"cat {root} 2>/dev/null || true"), 60, "Caddy's own CA"))
    return Browser(host, ca)


def test_sudo_web_serves_https_and_redirects_http(host: Host, browser: Browser):
    assert host.state("sudo-web.service") == "active"
    assert host.sh("systemctl is-enabled sudo-web.service") == "enabled"
    # A LAN name: Caddy's own CA, by default, which this client trusts and nothing else.
    headers = host.wait(
        lambda: browser.get("/healthz", "-o", "/dev/null", "-D", "-", check=False),
        60,
        "sudo-api through sudo-web",
    )
    assert re.match(r"HTTP/\S+ 200", headers), headers
    assert "strict-transport-security: max-age=31536000" in headers.lower()
    redirect = browser.get(
        "/login?next=/chat", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", scheme="http"
    )
    assert redirect == f"308 https://{WEB_DOMAIN}:{host.https_port}/login?next=/chat"


def test_a_reply_streams_through_sudo_web_as_it_is_written(host: Host, family: str, browser: Browser):
    stream = subprocess.Popen(
        [*browser.args("https", "/v1/chat/stream"), "-N", "-H", f"Authorization: Bearer {family}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stream.stdout.readline() == "retry: 2000\n"  # the stream is open, through Caddy
        text = "tell me through the proxy, word by word [drip:0.5]"
        sent = host.call("POST", "/v1/chat/messages", family, {"text": text})["message"]["id"]
        drafts = 0
        for line in stream.stdout:
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "draft" and drafts == 0:
                # Seen while the agent is still writing: the reply is not stored yet.
                mine = host.call("GET", "/v1/chat/messages", family)["messages"]
                assert [m["status"] for m in mine if m["id"] == sent] == ["delivered"], mine[-2:]
            drafts += event["type"] == "draft"
            if event["type"] == "message" and event["message"]["role"] == "assistant":
                break
        assert drafts >= 2 and event["message"]["text"].startswith("stub says: tell me"), event
    finally:
        stream.kill()
        stream.wait()


def test_twilio_signatures_verify_over_the_public_https_url(host: Host, browser: Browser):
    """sudo-api rebuilds the URL Twilio called from Caddy's X-Forwarded headers, which Caddy sets
    itself: a client's own X-Forwarded-Host is not passed on."""
    token = uuid.uuid4().hex
    host.sh(f"printf '%s\\n' {token} | sudoctl settings set twilio.auth_token")
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "delivered"}
    form = "&".join(f"{k}={v}" for k, v in params.items())

    def post(url: str, *options: str) -> str:
        signature = sign(url, params, token)
        return browser.get(
            "/v1/whatsapp/status", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", f"X-Twilio-Signature: {signature}", "-d", form, *options,
        )  # fmt: skip

    assert post(f"https://{WEB_DOMAIN}:{host.https_port}/v1/whatsapp/status") == "200"
    assert post("https://sudo.example.org/v1/whatsapp/status") == "403"
    assert (
        post("https://sudo.example.org/v1/whatsapp/status", "-H", "X-Forwarded-Host: sudo.example.org")
        == "403"
    )


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


def test_the_reaper_timer_evicts_an_idle_runtime(host: Host, family: str):
    assert len(host.runtimes()) == 1
    # As an operator would: drop-ins that fire the timer at once and every few seconds, and
    # count a runtime idle after 5 s.
    host.write(
        "/etc/systemd/system/sudo-reaper.timer.d/often.conf",
        "[Timer]\nOnActiveSec=1s\nOnUnitActiveSec=3s\nRandomizedDelaySec=0\nAccuracySec=1s\n",
    )
    host.write(
        "/etc/systemd/system/sudo-reaper.service.d/idle.conf",
        "[Service]\nExecStart=\nExecStart=/opt/venvs/sudo/bin/sudo-reaper --idle-sec 5\n",
    )
    host.sh("systemctl daemon-reload && systemctl restart sudo-reaper.timer")
    host.wait(lambda: not host.runtimes(), 90, "the reaper to evict the idle runtime")
    host.wait(
        lambda: "evicted 1 idle runtime(s)" in host.sh("journalctl -u sudo-reaper --no-pager"),
        30,
        "the reaper's account of it",
    )
    host.sh("rm -r /etc/systemd/system/sudo-reaper.timer.d /etc/systemd/system/sudo-reaper.service.d")
    host.sh("systemctl daemon-reload && systemctl restart sudo-reaper.timer")


# A newer build of the same packages: the same files under a higher version, as dpkg sees an
# upgrade (maintainer scripts with the old version, units restarted, conffiles kept).
REPACK = """
set -e
rm -rf /tmp/newer && mkdir /tmp/newer && cd /tmp/newer
for deb in /debs/*.deb; do
    old=$(dpkg-deb -f "$deb" Version)
    new="$old+e2e1"
    dir=$(basename "$deb" .deb)
    dpkg-deb -R "$deb" "$dir"
    sed -i -e "s/^Version: .*/Version: $new/" -e "s/(= $old)/(= $new)/g" "$dir/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip -z1 -b "$dir" "$dir.deb" >/dev/null
    rm -rf "$dir"
done
"""


REMEMBER = """
import sys
from pathlib import Path
memory = Path("/opt/data/memories/MEMORY.md")
entries = [e.strip() for e in memory.read_text().split("\\n\u00a7\\n") if e.strip() not in ("", "\u00a7")]
memory.write_text("\\n\u00a7\\n".join([*entries, sys.argv[1]]) + "\\n")
"""


def test_an_upgrade_keeps_history_memory_and_secrets(host: Host, family: str):
    secrets_before = host.sh("sha256sum /etc/sudo/credentials/*")
    api_pid = host.sh("systemctl show -p MainPID --value sudo-api.service")
    # Something the agent remembers, added to its memory file (entries end with a line holding
    # only "§") on its volume while the runtime is reaped, as the agent itself would write it.
    marker = "The family's cat is called Miso."
    host.docker.containers.run(
        HERMES_IMAGE,
        ["-c", REMEMBER, marker],
        entrypoint=["python3"],
        user="10000:10000",
        volumes={volume_of(host, family): {"bind": "/opt/data", "mode": "rw"}},
        network_mode="none",
        remove=True,
    )
    host.sh(REPACK)
    host.sh(
        "apt-get install -y -q -o Dpkg::Options::=--force-confold /tmp/newer/*.deb > /tmp/upgrade.log 2>&1"
        " || { tail -n 30 /tmp/upgrade.log; exit 1; }"
    )
    assert host.sh("dpkg-query -W -f '${Version}' sudo-core").endswith("+e2e1")
    assert host.sh("sha256sum /etc/sudo/credentials/*") == secrets_before
    assert host.state("sudo.target") == "active"
    host.wait(lambda: host.state("sudo-api.service") == "active", 60, "sudo-api after the upgrade")
    assert host.sh("systemctl show -p MainPID --value sudo-api.service") != api_pid, "restarted on upgrade"

    # The same session token still works, the history is all there, and the agent (a new
    # container on the same volume) still has the conversation it had before: the provider
    # sees the first message in what the agent sends along.
    history = chat(host, family, "what did I say first?")
    assert any(m["text"] == "hello from the installed system" for m in history)
    last = json.loads(host.llm_log.read_text().splitlines()[-1])
    assert "hello from the installed system" in " ".join(last["user_messages"])
    # Hermes keeps a session's system prompt, so the memory file is checked where it lives: in
    # the new runtime, after its boot script rewrote the identity entry and kept the agent's own.
    (runtime,) = host.runtimes()
    memory = runtime.exec_run(["cat", "/opt/data/memories/MEMORY.md"]).output.decode()
    assert marker in memory and "Family identity" in memory


def test_a_home_device_installs_pairs_and_heartbeats(host: Host, family: str):
    """sudo-edge's package on a second machine (amd64 here, as built on this one; the Pi's,
    built for arm64, is tests/e2e/test_edge_arm64.py's): configured, paired with a code,
    heartbeating."""
    pi = start_machine(
        f"{host.container.name}-pi",
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(ROOT / "dist"): {"bind": "/debs", "mode": "ro"},
        },
    )
    for runtime in host.runtimes():  # the family's agent is not running
        runtime.remove(force=True)
    try:
        install_edge(pi)
        assert pi.sh("systemctl is-enabled sudo-edge.service") == "enabled"
        assert pi.state("sudo-edge.service") == "inactive", "not started before it is configured"
        # Started unconfigured, it stops at once saying what to set, and is not restarted.
        pi.sh("systemctl start sudo-edge.service", check=False)
        pi.wait(lambda: pi.state("sudo-edge.service") == "failed", 30, "the unconfigured sudo-edge to stop")
        assert "api.url is not set" in pi.sh("journalctl -u sudo-edge --no-pager")
        assert pi.sh("systemctl show -p NRestarts --value sudo-edge.service") == "0"

        code = pair_edge(pi, host, family)
        assert code in pi.sh("journalctl -u sudo-edge --no-pager"), "the code is logged as well as spoken"
        assert pi.sh("stat -c '%a' /var/lib/sudo-edge/device.json") == "600"
        (device,) = host.wait(lambda: heard_from(host, family), 60, "a heartbeat from the device")
        # The beats warm the family's agent up: the provisioner admits a warm-up by the memory the
        # host has available, which it reads under its hardened unit.
        host.wait(host.runtimes, 120, "the beats to warm the family's agent up")
        assert device["name"] == pi.sh("hostname")
        # No LiveKit is set up and this machine has no sound card: both are said, neither crashes it.
        pi.wait(lambda: "voice is not set up" in status_of(pi, "sudo-edge"), 60, "the voice state")
        pi.wait(
            lambda: "cannot open ALSA playback device" in pi.sh("journalctl -u sudo-edge --no-pager"),
            30,
            "the missing speaker to be reported",
        )
        assert pi.state("sudo-edge.service") == "active"
        assert pi.sh("systemctl show -p NRestarts --value sudo-edge.service") == "0"
        # A restart keeps the device token: no new pairing.
        pi.sh("systemctl restart sudo-edge.service")
        pi.wait(lambda: status_of(pi, "sudo-edge").startswith("paired"), 30, "the device back, paired")
        announced = pi.sh("journalctl -u sudo-edge --no-pager | grep -c 'pairing code .*: enter it' || true")
        assert announced == "1"
        # Muted from the Pi's shell: the daemon answers on its socket, and the family sees it.
        assert pi.sh("sudo-edge mute").startswith("muted")
        assert pi.sh("stat -c '%a %F' /run/sudo-edge/control.sock") == "600 socket"
        host.wait(lambda: host.call("GET", "/v1/devices", family)["devices"][0]["muted"], 60, "the mute")
        pi.sh("systemctl restart sudo-edge.service")
        pi.wait(lambda: "muted" in status_of(pi, "sudo-edge"), 30, "the mute kept across the restart")
    finally:
        pi.container.remove(force=True)


OBSERVABILITY = "/usr/share/sudo/observability"


class Prometheus:
    """Debian's prometheus on the installed host, read through its HTTP API."""

    def __init__(self, host: Host, port: int) -> None:
        self.host, self.url = host, f"http://127.0.0.1:{port}/api/v1"

    def get(self, path: str, **params: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Each series of an instant query, by its labels (as text), with its value."""
        result = self.get("query", query=expr)["result"]
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}

    def firing(self) -> dict[str, dict]:
        """The alerts firing, by name."""
        return {a["labels"]["alertname"]: a for a in self.get("alerts")["alerts"] if a["state"] == "firing"}


@pytest.fixture(scope="module")
def prometheus(host: Host) -> Prometheus:
    """Prometheus as an operator sets it up from sudo-observability: the shipped prometheus.yml
    with the targets this host's sudo.toml gives its metrics listeners, and the shipped alert
    rules as they are. The test's own overrides: a scrape and an evaluation every second, and a
    port of its own (this host shares the real host's network)."""
    settings = tomllib.loads(host.sh("cat /etc/sudo/sudo.toml"))
    listeners = {"sudo-api": settings["api"]["metrics"], "sudo-gateway": settings["gateway"]["metrics"]}
    shipped = yaml.safe_load(host.sh(f"cat {OBSERVABILITY}/prometheus.yml"))
    assert shipped["rule_files"] == [f"{OBSERVABILITY}/alerts.yml"]
    assert {job["job_name"] for job in shipped["scrape_configs"]} == set(listeners)
    for job in shipped["scrape_configs"]:
        job["static_configs"] = [{"targets": [listeners[job["job_name"]]]}]
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    host.write("/etc/prometheus/prometheus.yml", yaml.safe_dump(shipped))
    port = free_port()
    host.write("/etc/default/prometheus", f'ARGS="--web.listen-address=127.0.0.1:{port}"\n')
    # Debian's promtool checks the configuration and, through it, the shipped rules.
    checked = host.sh("promtool check config /etc/prometheus/prometheus.yml 2>&1")
    assert f"Checking {OBSERVABILITY}/alerts.yml" in checked, checked
    host.sh("systemctl unmask prometheus.service && systemctl start prometheus.service")
    return Prometheus(host, port)


def test_prometheus_scrapes_the_daemons_with_the_shipped_files(
    host: Host, family: str, prometheus: Prometheus
):
    rules = host.sh(f"promtool check rules {OBSERVABILITY}/alerts.yml 2>&1")
    assert re.search(r"SUCCESS: \d+ rules found", rules), rules
    # Each alert, on the series that should and should not make it fire (tests/e2e/alerts_test.yml).
    host.write("/tmp/alerts_test.yml", (Path(__file__).parent / "alerts_test.yml").read_text())
    tested = host.sh("promtool test rules /tmp/alerts_test.yml 2>&1", check=False)
    assert tested.endswith("SUCCESS"), tested

    chat(host, family, "are you being watched?")
    host.wait(lambda: len(prometheus.query('up{job=~"sudo-.*"} == 1')) == 2, 60, "both daemons scraped")
    family_id = host.call("GET", "/v1/me", family)["account"]["user_id"]
    live = {
        "sudo_api_chat_messages_total": 'sudo_api_chat_messages_total{role="assistant"} > 0',
        "sudo_gateway_requests_total": 'sudo_gateway_requests_total{status="200"} > 0',
        # sudo-api's watcher reaches the provisioner's socket (starting it) every few seconds.
        "sudo_provisioner_socket_up": "sudo_provisioner_socket_up == 1",
        "sudo_runtime_memory_bytes": f'sudo_runtime_memory_bytes{{family="{family_id}"}} > 10e6',
        "sudo_runtime_memory_limit_bytes": (
            f'sudo_runtime_memory_limit_bytes{{family="{family_id}"}} == 768 * 2^20'
        ),
        # measured by the reaper's runs (test_the_reaper_timer_evicts_an_idle_runtime)
        "sudo_volume_used_bytes": f'sudo_volume_used_bytes{{family="{family_id}"}} > 0',
        "sudo_volume_quota_bytes": f'sudo_volume_quota_bytes{{family="{family_id}"}} == 5 * 2^30',
        # what Caddy serves: its own CA's certificate, valid now and for hours yet
        "sudo_web_certificate_expiry_timestamp_seconds": (
            f'sudo_web_certificate_expiry_timestamp_seconds{{domain="{WEB_DOMAIN}"}} - time() > 3600'
        ),
        "sudo_web_certificate_issued_timestamp_seconds": (
            f'sudo_web_certificate_issued_timestamp_seconds{{domain="{WEB_DOMAIN}"}} < time()'
        ),
    }
    (runtime,) = host.runtimes()
    if not host.docker.api.stats(runtime.id, stream=False, one_shot=True)["memory_stats"]:
        # An engine that samples no memory (`docker stats` says 0B: some sandboxed ones) gives
        # the provisioner none to report.
        del live["sudo_runtime_memory_bytes"], live["sudo_runtime_memory_limit_bytes"]
    for name, expr in live.items():
        # sudo-api samples the runtimes, volumes and certificate every api.monitor_interval_sec (30 s)
        host.wait(lambda expr=expr: prometheus.query(expr), 60, f"{name} in Prometheus: {expr}")
    # Every metric an alert reads is one the daemons expose (its HELP and TYPE are scraped even
    # while a labelled counter has no series yet), and nothing fires on a healthy host.
    known = set(prometheus.get("metadata"))
    used = set(re.findall(r"\bsudo_\w+", host.sh(f"cat {OBSERVABILITY}/alerts.yml")))
    assert used <= known, f"the alerts read metrics no daemon exposes: {sorted(used - known)}"
    assert not prometheus.firing(), prometheus.firing()


def test_the_backup_timer_writes_encrypted_archives_and_a_failed_night_alerts(
    host: Host, family: str, prometheus: Prometheus, tmp_path: Path
):
    """sudo-backup.timer fires under systemd, made to elapse soon by a drop-in. Its first run,
    with no backup.recipients, fails, and the alert fires; with the operator's public key, the
    next writes the family's archive, which only the private key (kept off the host) opens."""
    family_id = host.call("GET", "/v1/me", family)["account"]["user_id"]
    host.write(
        "/etc/systemd/system/sudo-backup.timer.d/soon.conf",
        "[Timer]\nOnCalendar=\nOnActiveSec=1s\nRandomizedDelaySec=0\nAccuracySec=1s\n",
    )

    def ended() -> str:
        return host.sh("systemctl show -p ExecMainExitTimestampMonotonic --value sudo-backup.service")

    def fire_timer() -> None:
        """Restart the timer (its OnActiveSec counts from then) and wait for the run it starts."""
        before = ended()
        host.sh("systemctl reset-failed sudo-backup.service; systemctl daemon-reload")
        host.sh("systemctl restart sudo-backup.timer")
        host.wait(
            lambda: ended() != before and host.state("sudo-backup.service") in ("inactive", "failed"),
            120,
            "the backup timer's run",
        )
        # the timer started it (a restart sets its last trigger back to none)
        assert host.sh("systemctl show -p LastTriggerUSecMonotonic --value sudo-backup.timer") != "0"

    fire_timer()
    assert host.state("sudo-backup.service") == "failed"
    assert "backup.recipients is empty" in host.sh("journalctl -u sudo-backup --no-pager")
    alert = host.wait(lambda: prometheus.firing().get("SudoBackupFailed"), 30, "the failed backup's alert")
    assert alert["labels"]["severity"] == "critical"
    assert prometheus.query("sudo_backup_last_success_timestamp == 0")

    identity = pyrage.x25519.Identity.generate()  # the operator's, kept on this side
    host.sh(f"printf '\\n[backup]\\nrecipients = [\"{identity.to_public()}\"]\\n' >> /etc/sudo/sudo.toml")
    started = time.time()
    fire_timer()
    assert host.state("sudo-backup.service") == "inactive"  # succeeded
    night = host.sh("ls /var/backups/sudo")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", night), night
    manifest = json.loads(host.sh(f"cat /var/backups/sudo/{night}/manifest.json"))
    (entry,) = manifest["families"]
    assert entry["family"] == family_id and not manifest["errors"], manifest
    archive = f"/var/backups/sudo/{night}/{family_id}.tar.age"
    assert host.sh(f"stat -c '%a %U' {archive}") == "600 sudo-backup"
    # Without the key it is age ciphertext, no tar; another key does not open it.
    encrypted = tmp_path / "archive.tar.age"
    encrypted.write_bytes(base64.b64decode(host.sh(f"base64 -w0 {archive}")))
    assert encrypted.read_bytes().startswith(b"age-encryption.org/v1\n")
    with pytest.raises(tarfile.TarError):
        tarfile.open(encrypted).close()
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(encrypted.read_bytes(), [pyrage.x25519.Identity.generate()])
    # The operator brings the key for a verify, and takes it away again.
    host.write("/root/operator.key", f"{identity}\n")
    try:
        verified = host.sh(f"sudoctl backup verify {night} --identity /root/operator.key")
    finally:
        host.sh("rm /root/operator.key")
    assert verified.startswith(f"ok {archive}: family {family_id} (E2E)"), verified
    # The night succeeded: the alert resolves and the metric says when.
    host.wait(lambda: "SudoBackupFailed" not in prometheus.firing(), 30, "the backup alert to resolve")
    assert prometheus.query(f"sudo_backup_last_success_timestamp > {started}")
    host.sh("rm -r /etc/systemd/system/sudo-backup.timer.d && systemctl daemon-reload")
    host.sh("systemctl restart sudo-backup.timer")
    print(f"backup: {entry['bytes']:,} bytes in {entry['seconds']} s, paused {entry['paused_sec']} s")


def test_purge_removes_everything(host: Host, family: str):
    volume = volume_of(host, family)
    assert host.docker.volumes.get(volume)
    host.sh(
        "apt-get purge -y -q sudo-core sudo-observability > /tmp/purge.log 2>&1"
        " || { tail -n 30 /tmp/purge.log; exit 1; }"
    )
    purge_log = host.sh("cat /tmp/purge.log")
    assert "deleted the family data volumes and the runtime network" in purge_log, purge_log
    assert host.sh("dpkg -l 'sudo-*' 2>/dev/null | grep -E '^(ii|rc)' || true") == ""
    # The database, the secrets, and sudo-web's certificates and CA key.
    gone = host.sh("ls /var/lib/sudo /etc/sudo/credentials /var/lib/private/sudo-web 2>&1 || true")
    assert gone.count("No such file") == 3, gone
    assert host.sh("systemctl list-units --all --no-legend 'sudo*' | grep -v not-found || true") == ""
    assert not host.runtimes()
    assert not host.docker.containers.list(all=True, filters={"label": f"sudo.scope={host.network}"})
    assert not host.docker.networks.list(names=[host.network])
    assert host.firewall() == ""  # the firewall went with the runtimes it kept
    with pytest.raises(docker.errors.NotFound):
        host.docker.volumes.get(volume)
