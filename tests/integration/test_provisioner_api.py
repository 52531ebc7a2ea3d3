"""The provisioner's socket API: bad input gets a clear 4xx and creates nothing; failures fail fast."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from stack import Stack

from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError


@pytest.fixture
async def raw(stack: Stack):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(stack.socket))) as s:
        yield s


BAD_REQUESTS = [
    ("POST", "/v1/runtimes/not-a-uuid/ensure", None, 400, "must be a UUID"),
    ("POST", "/v1/runtimes/../etc/ensure", None, 404, ""),
    ("GET", "/v1/runtimes/12345", None, 400, "must be a UUID"),
    ("DELETE", "/v1/runtimes/zzz", None, 400, "must be a UUID"),
    ("DELETE", f"/v1/runtimes/{uuid.uuid4()}?purge=maybe", None, 400, "purge must be"),
    ("POST", "/v1/runtimes/evict-idle", b"{not json", 400, "body must be JSON"),
    ("POST", "/v1/runtimes/evict-idle", b"[1]", 400, "JSON object"),
    ("POST", "/v1/runtimes/evict-idle", b'{"idle_sec": -1}', 400, "idle_sec"),
    ("POST", "/v1/runtimes/evict-idle", b'{"idle_sec": "soon"}', 400, "idle_sec"),
    ("POST", "/v1/runtimes/evict-idle", b'{"everything": true}', 400, "unknown field"),
    ("PUT", "/v1/runtimes", None, 405, ""),
    ("GET", "/v1/nothing-here", None, 404, ""),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS)
async def test_bad_requests_get_json_errors_and_change_nothing(
    stack: Stack, raw, method, path, body, status, message
):
    before = {c.id for c in stack.containers()}
    async with raw.request(method, f"http://p{path}", data=body) as resp:
        assert resp.status == status
        payload = await resp.json(content_type=None)
    assert message in payload["error"]
    assert {c.id for c in stack.containers()} == before


async def test_unknown_family_is_404_and_nothing_is_created(stack: Stack, provisioner):
    stranger = uuid.uuid4()
    with pytest.raises(ProvisionerError) as info:
        await provisioner.ensure(stranger)
    assert info.value.status == 404
    assert stack.container(stranger) is None
    with pytest.raises(ProvisionerError) as info:
        await provisioner.get(stranger)
    assert info.value.status == 404


async def test_oversized_body_is_refused(raw):
    async with raw.post("http://p/v1/runtimes/evict-idle", data=b"{" + b" " * 100_000 + b"}") as resp:
        assert resp.status == 413


async def test_metrics_and_health(raw):
    async with raw.get("http://p/health") as resp:
        assert (await resp.json()) == {"status": "ok"}
    async with raw.get("http://p/metrics") as resp:
        text = await resp.text()
    assert "sudo_provisioner_spawns_total" in text


async def test_a_runtime_that_dies_fails_fast_with_its_logs(stack: Stack, tmp_path):
    """An image Hermes cannot start in: the error comes at once, with the logs, not after 120 s."""
    base = next(t for i in stack.docker.images.list() for t in i.tags if t.startswith("sudo-debian:"))
    socket = tmp_path / "broken.sock"
    env = {"SUDO_RUNTIME_IMAGE": base, "SUDO_PROVISIONER_SOCKET": str(socket)}
    stack.start_provisioner(env, name="broken")
    family = stack.new_family("Broken")
    try:
        async with ProvisionerClient(socket) as broken:
            with pytest.raises(ProvisionerError) as info:
                await broken.ensure(family.id)
        assert info.value.status == 502
        assert "exited with code 1 before it was healthy" in info.value.body["error"]
        # the boot script's own complaint: the bare image has no writable /opt/data for uid 10000
        assert "Permission denied" in info.value.body["logs"]
        assert stack.container(family.id) is None, "a failed runtime must not be left for reuse"
    finally:
        stack.stop("broken")


async def test_an_oom_killed_runtime_is_reported_as_such(stack: Stack, tmp_path):
    socket = tmp_path / "tiny.sock"
    env = {"SUDO_RUNTIME_MEMORY": "8m", "SUDO_PROVISIONER_SOCKET": str(socket)}
    stack.start_provisioner(env, name="tiny")
    family = stack.new_family("Cramped")
    try:
        async with ProvisionerClient(socket) as tiny:
            with pytest.raises(ProvisionerError) as info:
                await tiny.ensure(family.id)
        assert info.value.status == 502
        assert "OOM-killed" in info.value.body["error"]
    finally:
        stack.stop("tiny")
