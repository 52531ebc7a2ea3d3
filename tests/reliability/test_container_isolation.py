"""From inside family A's runtime: family B's container, the host's services other than the LLM
gateway, and the Docker engine are all out of reach; the gateway is reachable (the control).

Every probe is a connection from A's container to an address of this test's own runtime network
(B's container, or the host's side of the bridge); nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from stack import BIN, Stack, wait_for

from sudo_provisioner.docker_backend import bridge_of

PROBE = r"""
import json, os, socket, stat, sys
results = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        results[target] = "open"
    except OSError as exc:
        results[target] = type(exc).__name__
sockets = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
    for name in files:
        path = os.path.join(root, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                sockets.append(path)
        except OSError:
            pass
mounts = open("/proc/mounts").read()
v6 = open("/proc/sys/net/ipv6/conf/all/disable_ipv6").read().strip()
seen = {"connect": results, "sockets": sockets, "mounts": mounts, "ipv6_off": v6}
print(json.dumps(seen))
"""


@contextlib.contextmanager
def canary(stack: Stack) -> Iterator[int]:
    """A host service bound to the bridge's address itself, as any service bound to 0.0.0.0 is."""
    with socket.socket() as listener:
        listener.bind((stack.settings.runtime.host_address, 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_a_family_container_reaches_the_gateway_and_nothing_else(stack: Stack, provisioner, figures):
    if "api" not in stack.processes:
        stack.start_api()
    a, b = stack.new_family("Isle A"), stack.new_family("Isle B")
    url_a = (await provisioner.ensure(a.id))["url"]
    url_b = (await provisioner.ensure(b.id))["url"]
    with canary(stack) as canary_port:
        ip_b = url_b.split("//")[1].split(":")[0]
        rt, host = stack.settings.runtime, stack.settings.runtime.host_address
        gateway = f"{host}:{stack.settings.gateway.port}"
        # What must fail: B's listeners, and every service of the host but the gateway.
        refused = [f"{ip_b}:{port}" for port in (rt.api_port, rt.chat_port, rt.whatsapp_port)]
        host_ports = {
            "sudo-api": int(stack.settings.api.listen.rsplit(":", 1)[1]),
            "sudo-api metrics": int(stack.settings.api.metrics.rsplit(":", 1)[1]),
            "gateway metrics": int(stack.settings.gateway.metrics.rsplit(":", 1)[1]),
            "LLM provider stand-in": int(stack.llm_url.rsplit(":", 1)[1]),
            "Docker over TCP": 2375,
            "Docker over TLS": 2376,
            "a service on the bridge's address": canary_port,
        }
        refused += [f"{host}:{port}" for port in host_ports.values()]
        targets = [gateway, *refused]
        container = stack.container(a.id)
        code, out = container.exec_run(["python3", "-c", PROBE, json.dumps(targets)], demux=True)
        assert code == 0, out
        seen = json.loads(out[0].decode())
        for target in targets:
            figures.tried("open" if seen["connect"][target] == "open" else "refused")
        figures.notes["probes"] = seen["connect"]

        assert seen["connect"][gateway] == "open", "family A cannot reach the LLM gateway"
        reached = {t: seen["connect"][t] for t in refused if seen["connect"][t] == "open"}
        assert not reached, f"family A reached {reached}"
        # Neither the Docker socket nor the provisioner's is in the container, under any name.
        assert not [s for s in seen["sockets"] if "docker" in s or "provisioner" in s], seen["sockets"]
        assert "docker.sock" not in seen["mounts"] and str(stack.socket) not in seen["mounts"]
        # No IPv6 to go around the firewall. (Docker gives even an internal network's containers a
        # default route to the host; the firewall refuses them every host address, not only the
        # bridge's, but this test connects only within its own network.)
        assert seen["ipv6_off"] == "1"
        # The host still reaches both agents: answers to its own connections pass the firewall.
        async with aiohttp.ClientSession() as http:
            for url in (url_a, url_b):
                async with http.get(f"{url}/health") as resp:
                    assert resp.status == 200
    for family in (a.id, b.id):
        await provisioner.stop(family)


def host_rules() -> str:
    """This host's iptables rules (the tests run as root, as `make test` does)."""
    return subprocess.run(["iptables", "-w", "10", "-S"], capture_output=True, text=True, check=True).stdout


def test_the_firewall_comes_with_the_provisioner_and_goes_with_remove_all(tmp_path: Path):
    other = Stack(tmp_path / "other")
    try:
        other.start_provisioner()
        # The provisioner makes the network, then the rules for its bridge, as it starts.
        wait_for(lambda: other.docker.networks.list(names=[other.network]), 60, "the runtime network")
        chain = f"SUDO-{bridge_of(other.docker, other.network)}"
        wait_for(lambda: f"-j {chain}" in host_rules(), 60, "the provisioner's firewall rules")
        port = other.settings.gateway.port
        assert (
            f"-A {chain} -d {other.settings.runtime.host_address}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
            in (host_rules())
        )
        other.stop("provisioner")
        removed = subprocess.run(
            [str(BIN / "sudo-provisioner"), "--remove-all"],
            env=other.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert removed.returncode == 0, removed.stderr
        assert chain not in host_rules()  # what apt remove runs: the host is left as it was
    finally:
        other.close()
