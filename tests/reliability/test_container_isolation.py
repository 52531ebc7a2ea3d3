"""From inside family A's runtime: family B's container, the host's services other than the LLM
gateway, and the Docker engine are all out of reach; the gateway is reachable (the control).

Every probe is a connection from A's container to an address of this test's own runtime network
(B's container, or the host's side of the bridge); nothing leaves the machine.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
from reliability_support import EngineRelay
from stack import BIN, Stack, wait_for

from sudo_provisioner.docker_backend import BRIDGE_NAME, DockerBackend
from sudo_provisioner.runtimes import RuntimeManager

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
    url_a = (await provisioner.ensure(a.id)).url
    url_b = (await provisioner.ensure(b.id)).url
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


# From a container on the runtime network, whose IPv6 the attacker got back (Docker leaves it
# off in a runtime: the probe turns it on, as a kernel or Docker change might): connect to every
# target, again and again until the deadline; the targets ever reached.
HAMMER = r"""
import json, socket, sys, time
targets, deadline, reached = json.loads(sys.argv[1]), time.monotonic() + float(sys.argv[2]), set()
while True:
    for host, port in targets:
        if f"{host} {port}" in reached:
            continue  # once is proof: again would fill the listener's queue (it never accepts)
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            reached.add(f"{host} {port}")
        except OSError:
            pass
    if time.monotonic() >= deadline or len(reached) == len(targets):
        break
    time.sleep(0.005)
print(json.dumps(sorted(reached)))
"""


def link_local(interface: str) -> str:
    """The interface's IPv6 link-local address on this host (from /proc/net/if_inet6)."""
    for line in Path("/proc/net/if_inet6").read_text().splitlines():
        hexaddr, _, _, scope, _, name = line.split()
        if name == interface and scope == "20":
            return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    raise AssertionError(f"{interface} has no IPv6 link-local address")


def sudoctl_firewall(stack: Stack, action: str) -> str:
    done = subprocess.run(
        [str(BIN / "sudoctl"), "firewall", action], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_host_firewall_holds_over_ipv4_and_ipv6_and_never_opens(stack: Stack, figures):
    """A service on every address of the host (IPv4 and IPv6) is out of the runtimes' reach; it
    is the firewall that keeps it so (removed, both are reached); and applying the rules again,
    twenty times while a container knocks without pause, never leaves a moment open."""
    rt = stack.settings.runtime
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as most services
        listener.bind(("::", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        targets = [[rt.host_address, port]]

        def knock(seconds: float) -> list[str]:
            out = stack.docker.containers.run(
                rt.image,
                [HAMMER, json.dumps(targets), str(seconds)],
                entrypoint=["python3", "-c"],
                user=rt.user,
                network=stack.network,
                sysctls={  # IPv6 on, its address usable at once (no duplicate detection)
                    "net.ipv6.conf.all.disable_ipv6": "0",
                    "net.ipv6.conf.eth0.disable_ipv6": "0",
                    "net.ipv6.conf.eth0.accept_dad": "0",
                },
                labels={"sudo.scope": stack.network},
                remove=True,
            )
            return json.loads(out)

        assert knock(1.0) == []
        # A bridge gets its IPv6 link-local address once a first container joins it: now.
        targets.append([f"{link_local(rt.bridge)}%eth0", port])
        assert knock(1.0) == []
        sudoctl_firewall(stack, "remove")
        try:  # the control: without the rules, both families of address reach the host
            assert len(reached := knock(10.0)) == 2, reached
        finally:
            sudoctl_firewall(stack, "apply")
        assert knock(1.0) == []

        knocking = concurrent.futures.ThreadPoolExecutor(1).submit(knock, 8.0)
        time.sleep(2)  # the container is up and knocking
        for _ in range(20):
            assert f"{rt.bridge} reaches" in sudoctl_firewall(stack, "apply")
        assert knocking.result(timeout=60) == []
        figures.tried("applied while knocking", 20)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert tables.splitlines().count(f"table inet {rt.bridge}") == 1


async def test_no_container_of_the_provisioner_is_privileged_root_or_on_the_host_network(stack: Stack):
    """Every container the provisioner creates (a runtime, the volume copy helpers) as Docker
    is asked for it, through the real engine; and the runtime as it runs."""
    client = docker.from_env()
    asked: list[dict] = []
    create = client.api.create_container

    def recording(*args, **kwargs):  # a spy on the real client: Docker still does the work
        asked.append(kwargs)
        return create(*args, **kwargs)

    client.api.create_container = recording
    backend = DockerBackend(stack.settings.runtime, stack.root / "spy-state", client)
    (stack.root / "spy-state").mkdir()
    await backend.prepare()
    manager = RuntimeManager(stack.settings, stack.db, backend, stack.secret.encode())
    await manager.start()
    family = stack.new_family("Rootless")
    try:
        runtime = await manager.ensure(family.id)
        running = stack.docker.containers.get(runtime.container_id)
        uid = running.exec_run(["id", "-u"]).output.decode().strip()
        archive = io.BytesIO()

        async def keep(chunk: bytes) -> None:
            archive.write(chunk)

        await manager.export_volume(family.id, keep)
        archive.seek(0)
        await manager.import_volume(family.id, archive)
    finally:
        await manager.stop(family.id, purge=True)
        await manager.close()

    roles = sorted(kwargs["labels"].get("sudo.role", "runtime") for kwargs in asked)
    assert roles == ["runtime", "volume-copy", "volume-copy"], roles
    for kwargs in asked:
        host = kwargs["host_config"]
        assert not host.get("Privileged"), kwargs
        assert host.get("NetworkMode") in (stack.network, "none"), kwargs
        assert not host.get("CapAdd") and host.get("CapDrop") == ["ALL"], kwargs
        assert "no-new-privileges" in host.get("SecurityOpt", []), kwargs
        assert kwargs["user"] == stack.settings.runtime.user != "0:0", kwargs
    assert uid == "10000"
    assert running.attrs["Config"]["User"] == "10000:10000" and not running.attrs["HostConfig"]["Privileged"]


def test_the_provisioner_starts_without_a_container_and_renames_an_old_bridge(tmp_path: Path):
    """It used to apply the host's firewall through a root container on the host's network: its
    start now creates no container. A runtime network from before the bridge's name was fixed
    (Docker's br-<id>, which the firewall would not know) is made again under the name, and
    its runtime goes with it (to start again on the family's next request)."""
    other = Stack(tmp_path / "other")
    relay = EngineRelay(tmp_path / "engine.sock")  # what this provisioner asks of the shared engine
    try:
        rt = other.settings.runtime
        old = other.docker.networks.create(other.network, labels={"sudo.role": "runtime-network"})
        runtime = other.docker.containers.run(
            rt.image,
            ["infinity"],
            entrypoint=["sleep"],
            user=rt.user,
            network=other.network,
            labels={"sudo.scope": other.network},
            detach=True,
        )
        relay.start()
        other.start_provisioner({"DOCKER_HOST": f"unix://{relay.path}"})

        def bridge() -> str | None:
            with contextlib.suppress(docker.errors.NotFound):
                return (other.docker.api.inspect_network(other.network)["Options"] or {}).get(BRIDGE_NAME)
            return None

        wait_for(lambda: bridge() == rt.bridge, 60, "the network under the bridge's name")
        assert other.docker.api.inspect_network(other.network)["Id"] != old.id
        with pytest.raises(docker.errors.NotFound):
            runtime.reload()
        other.stop("provisioner")
        asked = relay.requests()
        assert any("/networks/create" in line for line in asked), asked  # the relay saw its work
        assert not [line for line in asked if "/containers/create" in line], asked
    finally:
        relay.kill()
        other.close()
