"""The LLM gateway app in-process, against a real database: the paths that need no provider."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import twilio_stub
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sudo_core import usage
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


async def upstream_server(handler, path: str = "/v1/chat/completions") -> TestServer:
    """A provider stand-in for one behaviour; the real one is tests/llm_stub.py."""
    app = web.Application()
    app.router.add_post(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def thinking_upstream() -> tuple[TestServer, asyncio.Event, asyncio.Queue]:
    """A provider that answers nothing until `release` is set; `arrived` gets each request."""
    release, arrived = asyncio.Event(), asyncio.Queue()

    async def thinking(request: web.Request) -> web.Response:
        arrived.put_nowait(request)
        await release.wait()
        return web.json_response({"choices": [{"message": {"content": "done"}}]})

    return await upstream_server(thinking), release, arrived


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


async def test_one_family_holds_at_most_its_share_of_requests_at_once(gateway):
    """A family's agent cannot hold every connection: past gateway.family_in_flight requests in
    flight it is told 429 (retry in a second), while another family is served as ever."""
    client, db = gateway
    server, release, arrived = await thinking_upstream()
    cap = Settings().gateway.family_in_flight
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        busy, other = auth(db, "Busy"), auth(db, "Other")
        held = [
            asyncio.create_task(client.post("/v1/chat/completions", json=BODY, headers=busy))
            for _ in range(cap)
        ]
        for _ in range(cap):
            await arrived.get()
        refused = await client.post("/v1/chat/completions", json=BODY, headers=busy)
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["type"] == "rate_limit_error"
        served = asyncio.create_task(client.post("/v1/chat/completions", json=BODY, headers=other))
        await arrived.get()  # the other family's request reached the provider
        release.set()
        assert [r.status for r in await asyncio.gather(*held, served)] == [200] * (cap + 1)
        again = await client.post("/v1/chat/completions", json=BODY, headers=busy)
        assert again.status == 200  # the places come back with the answers
    finally:
        await server.close()


async def test_a_hundred_answers_in_progress_hold_back_no_other_family(gateway):
    """Every answer holds a connection to the provider while it streams: the 101st family's
    request must reach the provider at once, not wait for one of them (aiohttp's pool holds 100)."""
    client, db = gateway
    server, release, arrived = await thinking_upstream()
    # The families' side has no cap either: it stands for 101 agents, not one client.
    families = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = str(client.make_url("/v1/chat/completions"))
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        keys = [auth(db, f"F{i}") for i in range(101)]
        held = [asyncio.create_task(families.post(url, json=BODY, headers=key)) for key in keys[:100]]
        for _ in range(100):
            await asyncio.wait_for(arrived.get(), 10)
        last = asyncio.create_task(families.post(url, json=BODY, headers=keys[100]))
        await asyncio.wait_for(arrived.get(), 10)  # the 101st is at the provider
        release.set()
        responses = await asyncio.gather(*held, last)
        assert [r.status for r in responses] == [200] * 101
        for response in responses:
            response.release()
    finally:
        release.set()
        await families.close()
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


async def test_only_the_headers_an_agent_needs_come_back_from_the_provider(gateway):
    """A proxy such as litellm says where it forwards to and what its key has spent across every
    family; a provider sets cookies: none of it reaches a family's agent."""

    async def chatty(request: web.Request) -> web.Response:
        return web.json_response(
            {"choices": [{"message": {"content": "hello"}}]},
            headers={
                "x-litellm-key-spend": "12.5",
                "x-litellm-model-api-base": "http://10.0.0.5:8000/v1",
                "llm_provider-openai-organization": "host-org",
                "Set-Cookie": "session=provider",
                "Retry-After": "3",
                "x-ratelimit-remaining-requests": "99",
                "x-request-id": "req-1",
            },
        )

    client, db = gateway
    server = await upstream_server(chatty)
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        resp = await client.post("/v1/chat/completions", json=BODY, headers=auth(db))
        assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "hello"
        names = {name.lower() for name in resp.headers}
        assert {"retry-after", "x-ratelimit-remaining-requests", "x-request-id", "content-type"} <= names
        assert not {n for n in names if "litellm" in n or "llm_provider" in n or n == "set-cookie"}, names
    finally:
        await server.close()


async def test_voice_notes_reach_the_speech_provider_with_the_admins_model_and_key(gateway):
    seen: dict = {}

    async def transcribe(request: web.Request) -> web.Response:
        seen["authorization"] = request.headers.get("Authorization")
        form = await request.post()
        seen["fields"] = {
            k: (v if isinstance(v, str) else (v.filename, v.file.read())) for k, v in form.items()
        }
        return web.Response(text="a transcript", content_type="text/plain")

    client, db = gateway
    server = await upstream_server(transcribe, "/v1/audio/transcriptions")
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        db.set_setting("llm.api_key", "sk-provider")
        db.set_setting("stt.model", "whisper-large")
        form = aiohttp.FormData()
        form.add_field("model", "whatever-the-agent-asked")
        form.add_field("response_format", "text")
        form.add_field("file", b"OggS\0voice", filename="note.ogg", content_type="audio/ogg")
        resp = await client.post("/v1/audio/transcriptions", data=form, headers=auth(db))
        assert resp.status == 200 and await resp.text() == "a transcript"
        assert seen["authorization"] == "Bearer sk-provider"
        assert seen["fields"] == {
            "response_format": "text",
            "file": ("note.ogg", b"OggS\0voice"),
            "model": "whisper-large",
        }
        no_key = await client.post("/v1/audio/transcriptions", data=b"x")
        assert no_key.status == 401
    finally:
        await server.close()


async def test_the_bridge_speaks_through_the_tts_provider_with_the_admins_model_and_key(gateway):
    seen: list = []

    async def speak(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.json()))
        return web.Response(body=b"\x01\x00" * 2400, content_type="audio/pcm")

    client, db = gateway
    server = await upstream_server(speak, "/v1/audio/speech")
    try:
        resp = await client.post("/v1/audio/speech", json={"input": "hi"}, headers=auth(db))
        assert resp.status == 503 and "text-to-speech" in (await resp.json())["error"]["message"]
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        db.set_setting("llm.api_key", "sk-provider")
        body = {
            "model": "tts-hd",
            "input": "It is sunny.",
            "voice": "alloy",
            "response_format": "pcm",
            "x": 1,
        }
        resp = await client.post("/v1/audio/speech", json=body, headers=auth(db))
        assert resp.status == 200 and await resp.read() == b"\x01\x00" * 2400
        # The admin's model (tts-1 when none is set), the provider's key; unknown fields dropped.
        assert seen == [
            (
                "Bearer sk-provider",
                {"voice": "alloy", "response_format": "pcm", "input": "It is sunny.", "model": "tts-1"},
            )
        ]
        db.set_setting("tts.model", "tts-family")
        db.set_setting("tts.api_key", "sk-speech")
        await client.post("/v1/audio/speech", json=body, headers=auth(db))
        assert seen[-1][0] == "Bearer sk-speech" and seen[-1][1]["model"] == "tts-family"
        for bad in ({}, {"input": ""}, {"input": 5}, {"input": "x" * 4097}):
            resp = await client.post("/v1/audio/speech", json=bad, headers=auth(db))
            assert resp.status == 400, bad
        resp = await client.post("/v1/audio/speech", data=b"not json", headers=auth(db))
        assert resp.status == 400
        assert (await client.post("/v1/audio/speech", json=body)).status == 401
        assert len(seen) == 2  # nothing refused reached the provider
    finally:
        await server.close()


@pytest.fixture
async def twilio(tmp_path: Path):
    """The Twilio stand-in in process (tests/twilio_stub.py), its message log, its settings."""
    account, token = "AC" + "5" * 32, "t" * 32
    log = tmp_path / "twilio.jsonl"
    server = TestServer(twilio_stub.build_app(log, account, token), host="127.0.0.1")
    await server.start_server()
    settings = {
        "twilio.account_sid": account,
        "twilio.auth_token": token,
        "twilio.whatsapp_from": "+14155550100",
        "twilio.api_base": str(server.make_url("")).rstrip("/"),
    }
    yield (
        server,
        settings,
        lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else [],
    )
    await server.close()


async def test_whatsapp_messages_go_once_to_linked_numbers_within_the_window(gateway, twilio):
    client, db = gateway
    server, settings, sent = twilio
    headers = auth(db, "Hopper")
    family = db.list_families()[0].id
    db.execute(
        "INSERT INTO whatsapp_numbers (id, family_id, number, created_at, verified_at)"
        " VALUES ('n', ?, ?, 0, 1)",
        (str(family), "+447700900301"),
    )

    def message(message_id: str, to: str = "+447700900301", body: str = "hello") -> dict:
        return {"id": message_id, "to": to, "body": body}

    resp = await client.post("/v1/whatsapp/messages", json=message("m0"), headers=headers)
    assert resp.status == 503 and "not set up" in (await resp.json())["error"]
    for key, value in settings.items():
        db.set_setting(key, value)
    assert (
        await client.post("/v1/whatsapp/messages", json=message("m1", to="+15005550006"), headers=headers)
    ).status == 403
    assert (
        await client.post("/v1/whatsapp/messages", json=message("m1", body="x" * 1601), headers=headers)
    ).status == 400
    assert (await client.post("/v1/whatsapp/messages", json=message("m1"))).status == 401

    # The number wrote an hour ago: a plain message, sent once however often it is asked for.
    db.execute(
        "INSERT INTO whatsapp_inbox (sid, family_id, number, profile_name, body, media, status, received_at,"
        " updated_at) VALUES ('SM1', ?, '+447700900301', '', 'hi', '[]', 'delivered', ?, ?)",
        (str(family), time.time() - 3600, time.time() - 3600),
    )
    for _ in range(3):
        resp = await client.post("/v1/whatsapp/messages", json=message("m2"), headers=headers)
        assert resp.status in (200, 201) and (await resp.json())["status"] == "queued"
    assert [(m["to"], m["body"]) for m in sent()] == [("whatsapp:+447700900301", "hello")]

    # Twilio busy: passed on to retry; refused for good: recorded as failed for the admin.
    async with aiohttp.ClientSession() as http:
        await http.post(server.make_url("/_stub/faults"), json={"status": 429, "count": 1})
        resp = await client.post("/v1/whatsapp/messages", json=message("m3"), headers=headers)
        assert resp.status == 429
        assert db.query_one("SELECT status FROM whatsapp_outbound WHERE id LIKE '%:m3'")[0] == "retrying"
        assert (await client.post("/v1/whatsapp/messages", json=message("m3"), headers=headers)).status == 201
        fault = {"to": "whatsapp:+447700900301", "status": 400, "code": 63003, "message": "unreachable"}
        await http.post(server.make_url("/_stub/faults"), json=fault)
        resp = await client.post("/v1/whatsapp/messages", json=message("m4"), headers=headers)
        assert resp.status == 400 and "63003" in (await resp.json())["error"]
        await http.delete(server.make_url("/_stub/faults"))

    # Outside the window: held without a template, the template with one.
    db.execute("UPDATE whatsapp_inbox SET received_at = ?", (time.time() - 25 * 3600,))
    resp = await client.post("/v1/whatsapp/messages", json=message("m5", body="later"), headers=headers)
    assert resp.status == 202 and (await resp.json())["status"] == "held"
    db.set_setting("twilio.template_sid", "HX" + "b" * 32)
    resp = await client.post("/v1/whatsapp/messages", json=message("m6", body="reminder"), headers=headers)
    assert resp.status == 201
    assert sent()[-1]["content_sid"] == "HX" + "b" * 32 and sent()[-1]["content_variables"] == {
        "1": "reminder"
    }
    assert [m["body"] for m in sent()].count("later") == 0

    # A send in progress elsewhere is not repeated; one silent for a minute died with its sender.
    key = f"{family.hex}:m7"
    db.execute(
        "INSERT INTO whatsapp_outbound (id, family_id, number, body, status, created_at, updated_at)"
        " VALUES (?, ?, '+447700900301', 'once', 'sending', ?, ?)",
        (key, str(family), time.time(), time.time()),
    )
    db.execute("UPDATE whatsapp_inbox SET received_at = ?", (time.time(),))
    resp = await client.post("/v1/whatsapp/messages", json=message("m7", body="once"), headers=headers)
    assert resp.status == 503 and [m["body"] for m in sent()].count("once") == 0
    db.execute("UPDATE whatsapp_outbound SET updated_at = ? WHERE id = ?", (time.time() - 120, key))
    resp = await client.post("/v1/whatsapp/messages", json=message("m7", body="once"), headers=headers)
    assert resp.status == 201 and [m["body"] for m in sent()].count("once") == 1


async def test_a_key_goes_only_to_the_server_it_was_entered_for(gateway):
    """The LLM key stands in for a speech key only on the LLM provider's own server: an STT
    address of someone else's, set without its own key, is sent no key."""
    seen: list[str | None] = []

    async def transcribe(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="words", content_type="text/plain")

    client, db = gateway
    llm = await upstream_server(transcribe, "/v1/audio/transcriptions")
    other = await upstream_server(transcribe, "/v1/audio/transcriptions")
    try:
        db.set_setting("llm.base_url", str(llm.make_url("/v1")))
        db.set_setting("llm.api_key", "sk-provider")
        form = {"file": b"OggS\0voice"}
        assert (await client.post("/v1/audio/transcriptions", data=form, headers=auth(db, "A"))).status == 200
        db.set_setting("stt.base_url", str(other.make_url("/v1")))  # another port: another server
        assert (await client.post("/v1/audio/transcriptions", data=form, headers=auth(db, "B"))).status == 200
        assert seen == ["Bearer sk-provider", None]
    finally:
        await llm.close()
        await other.close()


async def test_a_family_cannot_order_more_than_one_bounded_answer_of_the_admins_model(gateway):
    """n, max_tokens and a provider's own routing fields (OpenRouter's fallback `models`,
    `provider` order, `transforms`) would spend the shared quota or get around the admin's model."""
    seen: list[dict] = []

    async def provider(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    client, db = gateway
    server = await upstream_server(provider)
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        db.set_setting("llm.model", "the-admins-model")
        greedy = BODY | {
            "model": "the-most-expensive-one",
            "n": 64,
            "max_tokens": 10**7,
            "max_completion_tokens": 0,
            "models": ["the-most-expensive-one"],
            "provider": {"order": ["anyone"]},
            "transforms": ["middle-out"],
            "temperature": 0.2,
        }
        resp = await client.post("/v1/chat/completions", json=greedy, headers=auth(db))
        assert resp.status == 200
        ceiling = Settings().gateway.max_tokens
        assert seen == [
            {
                "model": "the-admins-model",
                "messages": BODY["messages"],
                "max_tokens": ceiling,
                "max_completion_tokens": ceiling,
                "temperature": 0.2,
            }
        ]
        await client.post("/v1/chat/completions", json=BODY | {"max_tokens": 300}, headers=auth(db, "G"))
        assert seen[-1]["max_tokens"] == 300  # a modest answer is asked as it was
    finally:
        await server.close()


async def test_each_answer_is_metered_and_past_the_budget_the_family_is_told(gateway):
    """The provider's own counts (a plain answer's usage, a stream's last event), read as the
    answer passes, gzipped or not; past the admin's daily budget the family's agent gets an
    answer saying so, and the provider is not asked."""
    asked: list[dict] = []

    async def provider(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        asked.append(body)
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        if not body.get("stream"):
            data = gzip.compress(json.dumps({"choices": [], "usage": usage}).encode())
            return web.Response(
                body=data, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n')
        if body.get("stream_options", {}).get("include_usage"):
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    client, db = gateway
    server = await upstream_server(provider)
    try:
        db.set_setting("llm.base_url", str(server.make_url("/v1")))
        headers = auth(db, "Metered")
        family = db.list_families()[0].id
        for stream in (False, True):
            resp = await client.post("/v1/chat/completions", json=BODY | {"stream": stream}, headers=headers)
            assert resp.status == 200
            await resp.read()
        assert asked[1]["stream_options"] == {"include_usage": True}  # added, so the provider counts
        for _ in range(100):  # counted once the answer's last byte went out, a moment after it arrives
            days = usage.of_family(db, family)
            if days and days[0].answers == 2:
                break
            await asyncio.sleep(0.05)
        [day] = usage.of_family(db, family)
        assert (day.tokens_in, day.tokens_out, day.answers) == (200, 40, 2)

        db.set_setting("llm.daily_tokens", "240")  # spent exactly: the next answer is refused
        plain = await client.post("/v1/chat/completions", json=BODY, headers=headers)
        said = (await plain.json())["choices"][0]["message"]["content"]
        assert plain.status == 200 and "used today's share" in said and "240" in said
        streamed = await client.post("/v1/chat/completions", json=BODY | {"stream": True}, headers=headers)
        assert "used today's share" in await streamed.text()
        assert len(asked) == 2, "the provider was not asked past the budget"
        other = await client.post("/v1/chat/completions", json=BODY, headers=auth(db, "Frugal"))
        assert other.status == 200 and len(asked) == 3  # each family has its own share
    finally:
        await server.close()
