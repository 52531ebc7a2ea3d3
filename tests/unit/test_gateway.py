"""The LLM gateway app in-process, against a real database: the paths that need no provider."""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sudo_core.config import LLMSettings, Settings
from sudo_core.db import Database
from sudo_core.families import llm_key_for
from sudo_gateway.gateway import Gateway, build_app

SECRET = b"g" * 32
BODY = {"model": "anything", "messages": [{"role": "user", "content": "hi"}]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def gateway(tmp_path: Path):
    db = Database(tmp_path / "sudo.db")
    settings = dataclasses.replace(Settings(), llm=LLMSettings(base_url="", model="m"))
    gw = Gateway(settings, db, SECRET)
    client = TestClient(TestServer(build_app(gw)))
    await client.start_server()
    yield client, db
    await client.close()
    await gw.close()
    db.close()


def auth(db: Database, name: str = "F") -> dict[str, str]:
    family = db.create_family(name)
    return {"Authorization": f"Bearer {llm_key_for(SECRET, family.id)}"}


async def test_no_provider_configured_is_a_clear_503(gateway):
    client, db = gateway
    resp = await client.post("/v1/chat/completions", json=BODY, headers=auth(db))
    assert resp.status == 503
    assert "no LLM provider is configured" in (await resp.json())["error"]["message"]


async def test_unreachable_provider_is_a_502_and_releases_the_lease(gateway):
    client, db = gateway
    db.set_setting("llm.base_url", f"http://127.0.0.1:{closed_port()}/v1")
    headers = auth(db)
    resp = await client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert resp.status == 502
    assert "could not be reached" in (await resp.json())["error"]["message"]
    family = db.list_families()[0]
    assert not db.has_active_lease(family.id)


async def test_deleted_familys_key_stops_working(gateway):
    client, db = gateway
    headers = auth(db, "Leaving")
    assert (await client.get("/v1/models", headers=headers)).status == 200
    db.delete_family(db.list_families()[0].id)
    # a fresh gateway process has no cache: the key is checked against the database
    gw = Gateway(Settings(), db, SECRET)
    fresh = TestClient(TestServer(build_app(gw)))
    await fresh.start_server()
    try:
        assert (await fresh.get("/v1/models", headers=headers)).status == 401
    finally:
        await fresh.close()
        await gw.close()


async def test_models_offers_only_the_admins_model(gateway):
    client, db = gateway
    headers = auth(db)
    listing = await (await client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in listing["data"]] == ["m"]
    assert (await client.get("/v1/models/m", headers=headers)).status == 200
    assert (await client.get("/v1/models/other", headers=headers)).status == 404
    assert (await client.get("/v1/models")).status == 401


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
async def test_bad_bodies_are_400(gateway, body):
    client, db = gateway
    headers = auth(db) | {"Content-Type": "application/json"}
    resp = await client.post("/v1/chat/completions", data=body, headers=headers)
    assert resp.status == 400


async def test_everything_else_is_404(gateway):
    client, _ = gateway
    for method, path in (("GET", "/"), ("POST", "/v1/embeddings"), ("GET", "/metrics")):
        resp = await client.request(method, path)
        assert resp.status == 404, path
        assert isinstance(await resp.json(), dict)


async def upstream_server(handler) -> TestServer:
    """A provider stand-in for one behaviour; the real one is tests/llm_stub.py."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_a_provider_breaking_off_mid_answer_breaks_the_stream(gateway):
    async def half_answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "Half"}}]}\n\n')
        request.transport.close()  # the provider dies mid-answer
        return response

    client, db = gateway
    server = await upstream_server(half_answer)
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        resp = await client.post("/v1/chat/completions", json=BODY | {"stream": True}, headers=auth(db))
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # never a short answer that looks complete
    finally:
        await server.close()


async def test_compressed_answers_pass_through_intact(gateway):
    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(json.dumps({"choices": [{"message": {"content": "hello"}}]}).encode())
        return web.Response(
            body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    client, db = gateway
    server = await upstream_server(gzipped)
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        resp = await client.post("/v1/chat/completions", json=BODY, headers=auth(db))
        assert (await resp.json())["choices"][0]["message"]["content"] == "hello"
    finally:
        await server.close()
