"""ensure: a real Hermes container per family, healthy before anyone hears of it, hardened,
talking to the LLM only through the gateway, and holding no global secret."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from control_plane import chat
from stack import Stack

from sudo_core.families import runtime_name, volume_name
from sudo_core.provisioner_client import ProvisionerClient


async def test_ensure_spawns_a_healthy_labelled_runtime(stack: Stack, provisioner, http):
    family = stack.new_family("Lovelace")
    before = time.time()
    runtime = await provisioner.ensure(family.id)

    assert runtime.name == runtime_name(family.id)
    assert runtime.state == "running"
    async with http.get(f"{runtime.url}/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"

    container = stack.container(family.id)
    labels = container.labels
    assert labels["sudo.owner"] == str(family.id)
    assert labels["sudo.image"] == stack.settings.runtime.image
    assert len(labels["sudo.config-hash"]) == 16
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/opt/data"]["Name"] == volume_name(family.id)
    assert mounts["/opt/data"]["RW"] is True
    assert mounts["/opt/data/plugins"]["RW"] is False
    assert stack.db.get_family(family.id).last_active_at >= before

    described = await provisioner.get(family.id)
    assert described.config_hash == labels["sudo.config-hash"]
    assert described.stale is False
    assert described.url == runtime.url


async def test_runtime_is_hardened(stack: Stack, provisioner):
    family = stack.new_family()
    await provisioner.ensure(family.id)
    host = stack.container(family.id).attrs["HostConfig"]
    settings = stack.settings.runtime
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == settings.pids_limit
    assert host["Memory"] == 768 * 1024 * 1024
    assert host["NanoCpus"] == int(settings.cpus * 1e9)
    assert host["Privileged"] is False
    binds = " ".join(host.get("Binds") or [])
    assert "docker.sock" not in binds

    container = stack.container(family.id)
    code, (out, _) = container.exec_run(
        ["sh", "-c", "id -u; ls -l /var/run/docker.sock /run/docker.sock"], demux=True
    )  # stdout apart: the two streams interleave in no fixed order
    assert out.decode().splitlines()[0] == "10000"
    assert code != 0, "no Docker socket may exist inside a family container"
    code, _ = container.exec_run(["sh", "-c", "touch /usr/x"])
    assert code != 0, "the root filesystem must be read-only"


async def test_hermes_leaves_recovery_to_sudo(stack: Stack, provisioner):
    """Hermes reads the config Sudo wrote and keeps no delivery ledger of its own, whose
    replay at start would send a reply the plugins already journaled a second time."""
    family = stack.new_family("Recovery")
    await provisioner.ensure(family.id)
    probe = "from gateway.delivery_ledger import ledger_enabled; print(ledger_enabled())"
    code, out = stack.container(family.id).exec_run(["python3", "-c", probe])
    assert (code, out.decode().strip()) == (0, "False")


async def test_concurrent_ensures_share_one_spawn_per_family(stack: Stack, provisioner):
    families = [stack.new_family(f"Crowd {i}") for i in range(10)]
    calls = [provisioner.ensure(families[i % 10].id) for i in range(50)]
    results = await asyncio.gather(*calls)

    names = {r.name for r in results}
    assert names == {runtime_name(f.id) for f in families}
    for family in families:
        matching = [c for c in stack.containers() if c.labels["sudo.owner"] == str(family.id)]
        assert len(matching) == 1, f"{family.id} has {len(matching)} containers"
    # each family's callers got the same URL
    by_family = {}
    for r in results:
        by_family.setdefault(r.family, set()).add(r.url)
    assert all(len(urls) == 1 for urls in by_family.values())
    await asyncio.gather(*(provisioner.stop(f.id, purge=True) for f in families))


async def test_chat_reaches_the_llm_through_hermes_and_the_gateway(stack: Stack, provisioner, http):
    family = stack.new_family("Chatty")
    runtime = await provisioner.ensure(family.id)
    answer = await chat(http, runtime.url, stack.api_key(family.id), "what is for dinner?")
    assert "stub says: what is for dinner?" in answer

    seen = [r for r in stack.llm_requests() if r["last_user"] == "what is for dinner?"]
    assert seen, "the stand-in provider never saw the message"
    # the provider saw the global key and the admin's model, never the family's own key
    assert seen[-1]["authorization"] == f"Bearer {stack.llm_key}"
    assert seen[-1]["model"] == "family-model"
    assert seen[-1]["stream"] is True
    async with http.get(f"http://{stack.settings.gateway.metrics}/metrics") as resp:
        assert 'sudo_gateway_requests_total{status="200"}' in await resp.text()


async def test_hermes_refuses_another_familys_key(stack: Stack, provisioner, http):
    a, b = stack.new_family("A"), stack.new_family("B")
    runtime = await provisioner.ensure(a.id)
    async with http.post(
        f"{runtime.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.api_key(b.id)}"},
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 401


async def test_global_llm_key_is_nowhere_in_the_container(stack: Stack, provisioner, http):
    family = stack.new_family("Secretless")
    runtime = await provisioner.ensure(family.id)
    await chat(http, runtime.url, stack.api_key(family.id), "remember nothing secret")
    container = stack.container(family.id)

    assert stack.llm_key not in str(container.attrs), "global key in the container's config/env"
    assert stack.secret not in str(container.attrs), "host secret in the container's config/env"
    # every file the container can see, and every process's environment
    for secret in (stack.llm_key, stack.secret):
        assert search_container(container, secret) == ["0"], "found a global secret in the container"
    # the search works: the family's own key is in its config and its processes' environment
    found = search_container(container, stack.api_key(family.id))
    assert "/opt/data/config.yaml" in found
    assert found[-1] != "0"


def search_container(container, text: str) -> list[str]:
    """Files holding `text` (all but /proc, /sys, /dev), then how many process environments do."""
    script = (
        "for d in /*; do case $d in /proc|/sys|/dev) ;; "
        f"*) grep -rsl --devices=skip -- '{text}' \"$d\";; esac; done; "
        f"cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -c -- '{text}'"
    )
    _, out = container.exec_run(["sh", "-c", script])
    return out.decode().split()


async def test_rotating_the_llm_key_restarts_nothing(stack: Stack, provisioner, http):
    family = stack.new_family("Rotation")
    runtime = await provisioner.ensure(family.id)
    started = stack.container(family.id).attrs["State"]["StartedAt"]
    new_key = "sk-ROTATED-0123456789abcdef"
    stack.llm_keys.write_text(new_key + "\n")  # the provider now accepts only the new key
    try:
        stack.db.set_setting("llm.api_key", new_key)  # what /admin/settings saves
        answer = await chat(http, runtime.url, stack.api_key(family.id), "after rotation")
        assert "stub says: after rotation" in answer
        seen = [r for r in stack.llm_requests() if r["last_user"] == "after rotation"]
        assert seen[-1]["authorization"] == f"Bearer {new_key}"
        assert stack.container(family.id).attrs["State"]["StartedAt"] == started
        assert (await provisioner.ensure(family.id)).url == runtime.url
        assert stack.container(family.id).attrs["State"]["StartedAt"] == started
    finally:
        stack.db.set_setting("llm.api_key", stack.llm_key)
        stack.llm_keys.write_text(stack.llm_key + "\n")


async def test_family_containers_cannot_reach_each_other(stack: Stack, provisioner):
    a, b = stack.new_family("Island A"), stack.new_family("Island B")
    url_a = (await provisioner.ensure(a.id)).url
    url_b = (await provisioner.ensure(b.id)).url
    ip_b = url_b.split("//")[1].split(":")[0]
    gateway = f"{stack.settings.runtime.host_address}:{stack.settings.gateway.port}"

    probe = (
        "import socket, sys\n"
        "def reach(host, port):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close(); return 'open'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        "print(reach(sys.argv[1], int(sys.argv[2])))\n"
    )
    container_a = stack.container(a.id)

    def run(host: str, port: int) -> str:
        _, out = container_a.exec_run(["python3", "-c", probe, host, str(port)])
        return out.decode().strip()

    assert run(ip_b, 8642) != "open", "family A reached family B's agent"
    host, port = gateway.split(":")
    assert run(host, int(port)) == "open", "family A cannot reach the LLM gateway"
    # and the host can still reach both (that is how the control plane talks to them)
    async with aiohttp.ClientSession() as http:
        for url in (url_a, url_b):
            async with http.get(f"{url}/health") as resp:
                assert resp.status == 200


async def test_gateway_refuses_bad_keys(stack: Stack, provisioner, http):
    base = f"http://{stack.settings.runtime.host_address}:{stack.settings.gateway.port}/v1"
    family = stack.new_family("Gate")
    await provisioner.ensure(family.id)  # the runtime network exists from here on
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    for key in ("", "Bearer nonsense", f"Bearer {stack.api_key(family.id)}", f"Bearer {stack.llm_key}"):
        async with http.post(f"{base}/chat/completions", json=body, headers={"Authorization": key}) as r:
            assert r.status == 401, key
            assert (await r.json())["error"]["type"] == "authentication_error"


async def test_provisioner_client_reports_unknown_family(stack: Stack, provisioner: ProvisionerClient):
    import uuid

    from sudo_core.provisioner_client import ProvisionerError

    try:
        await provisioner.ensure(uuid.uuid4())
    except ProvisionerError as exc:
        assert exc.status == 404
        assert "no family" in exc.body["error"]
    else:
        raise AssertionError("ensure of an unknown family succeeded")
