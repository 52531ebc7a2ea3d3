"""Photos and voice notes in the web chat, in process on a real database: the shared rules, the
multipart forms of /v1 and the page, and who may fetch a file back. No runtime runs here: a file
that passes every rule goes on to the agent's runtime, which answers 503 as unreachable."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_services import offline_services

from sudo_api import media, whatsapp
from sudo_api.app import build_app
from sudo_api.context import Services
from sudo_api.media import MEDIA_MAX, UPLOAD_BODY_MAX, MediaRefused, Upload
from sudo_core.db import Database

PASSWORD = "a long password"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Services]]:
    async with (
        offline_services(tmp_path, "service") as services,
        TestClient(TestServer(build_app(services))) as test_client,
    ):
        yield test_client, services


async def sign_up(client: TestClient, name: str, family: str) -> dict[str, str]:
    """A new family's owner: the headers their page's script sends to /v1."""
    form = {"email": f"{name}@example.org", "password": PASSWORD, "name": name, "family_name": family}
    resp = await client.post("/signup", data=form, allow_redirects=False)
    return await headers_of(client, re.search(r"sudo_session=([^;]+)", resp.headers["Set-Cookie"]).group(1))


async def headers_of(client: TestClient, cookie: str) -> dict[str, str]:
    page = await client.get("/chat", headers={"Cookie": f"sudo_session={cookie}"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    return {"Cookie": f"sudo_session={cookie}", "X-CSRF-Token": csrf, "csrf": csrf}


async def add_child(client: TestClient, parent: dict[str, str], username: str) -> dict[str, str]:
    form = {"csrf": parent["csrf"], "action": "add-child", "name": username.title(), "username": username}
    resp = await client.post("/family", data=form | {"password": PASSWORD}, headers=cookie_of(parent))
    assert resp.status in (200, 303), await resp.text()
    login = await client.post("/login", data={"email": username, "password": PASSWORD}, allow_redirects=False)
    return await headers_of(client, re.search(r"sudo_session=([^;]+)", login.headers["Set-Cookie"]).group(1))


def cookie_of(headers: dict[str, str]) -> dict[str, str]:
    return {"Cookie": headers["Cookie"]}


def api_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "csrf"}


NO_FILE = (b"", "", "application/octet-stream")
"""What a browser sends for a file input left empty."""


def form(text: str | None, *files: tuple[bytes, str, str]) -> aiohttp.FormData:
    """multipart/form-data as the page's script and form send it (with no file: its empty part)."""
    data = aiohttp.FormData()
    if text is not None:
        data.add_field("text", text)
    for content, filename, kind in files or (NO_FILE,):
        data.add_field("file", content, filename=filename, content_type=kind)
    return data


def test_one_set_of_rules_for_whatsapp_and_the_web_chat():
    assert media.check("image/jpeg", 10) == "image/jpeg"
    assert media.check("audio/webm;codecs=opus", 10) == "audio/webm"  # Chromium's recordings
    assert media.check("Audio/OGG; codecs=opus", 10) == "audio/ogg"  # WhatsApp's and Firefox's
    assert media.check("image/png", MEDIA_MAX) == "image/png"
    for declared, size, status, said in [
        ("video/mp4", 10, 400, "not mp4 files yet"),
        ("image/heic", 10, 400, "not heic files yet"),
        ("", 10, 400, "not unknown files yet"),
        ("image/png", MEDIA_MAX + 1, 413, "the limit is 16 MB"),
        ("audio/webm", 0, 400, "That file is empty"),
    ]:
        with pytest.raises(MediaRefused, match=said) as refused:
            media.check(declared, size)
        assert refused.value.status == status
    # WhatsApp's delivery refuses with the very same words and types.
    assert whatsapp.MEDIA_TYPES is media.MEDIA_TYPES and whatsapp.TOO_LARGE == media.TOO_LARGE


async def test_v1_takes_a_file_with_or_without_words_and_refuses_bad_ones_plainly(client):
    client, services = client
    owner = api_headers(await sign_up(client, "olga", "Oak"))
    post = lambda data: client.post("/v1/chat/messages", data=data, headers=owner)  # noqa: E731

    # Words alone, multipart as the page's script sends them, with the empty part a browser
    # sends for a file input left empty.
    sent = await post(form("hello"))
    assert sent.status == 202, await sent.text()
    message = (await sent.json())["message"]
    assert message["text"] == "hello" and message["media_type"] is None and message["media_url"] is None

    async def refused(data: aiohttp.FormData, status: int, said: str) -> None:
        resp = await post(data)
        assert resp.status == status and said in (await resp.json())["error"], (status, await resp.text())

    await refused(form(""), 400, "unless a file is attached")
    await refused(form(None), 400, "unless a file is attached")
    await refused(form("", (b"", "photo.png", "image/png")), 400, "That file is empty")
    await refused(form("look", (b"GIF89a...", "cat.gif", "image/gif")), 400, "not gif files yet")
    await refused(form("", (b"x" * (MEDIA_MAX + 1), "big.png", "image/png")), 413, "the limit is 16 MB")
    await refused(form("", (PNG, "a.png", "image/png"), (PNG, "b.png", "image/png")), 400, "one photo")
    await refused(form("x" * 8001, (PNG, "a.png", "image/png")), 400, "1 to 8000 characters")
    # Past what any upload may be, refused before it is parsed, in the same words.
    await refused(form("", (b"x" * UPLOAD_BODY_MAX, "huge.png", "image/png")), 413, "the limit is 16 MB")
    # A part whose headers are no headers (found by the fuzzer: it was a 500).
    boundary = "b0undary"
    garbled = client.post(
        "/v1/chat/messages",
        data=f"--{boundary}\r\n\U0002d169--{boundary}--\r\n".encode(),
        headers=owner | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    async with garbled as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "the form could not be read"
    # A good photo passes every rule and goes on to the agent's runtime: none runs here.
    await refused(form("", (PNG, "a.png", "image/png")), 503, "could not be reached")
    # Refused, nothing was kept: only the words sent alone.
    assert [r["text"] for r in services.db.query("SELECT text FROM messages")] == ["hello"]
    # Other requests keep their small limit.
    assert (await client.post("/v1/auth/login", data=b"x" * 300_000)).status == 413


async def test_the_page_form_refuses_a_bad_file_and_keeps_the_words(client):
    client, _ = client
    owner = await sign_up(client, "pia", "Pine")
    post = lambda data: client.post("/chat", data=data, headers=cookie_of(owner))  # noqa: E731

    data = form("about this", (b"%PDF-1.4", "doc.pdf", "application/pdf"))
    data.add_field("csrf", owner["csrf"])
    page = await post(data)
    assert page.status == 400
    shown = await page.text()
    assert "not pdf files yet" in shown and ">about this</textarea>" in shown

    data = form("", (b"x" * (MEDIA_MAX + 1), "big.jpg", "image/jpeg"))
    data.add_field("csrf", owner["csrf"])
    page = await post(data)
    assert page.status == 413 and "the limit is 16 MB" in await page.text()

    data = form("no token", (PNG, "a.png", "image/png"))
    assert (await post(data)).status == 403  # the form's CSRF token, multipart or not

    data = form("words only")
    data.add_field("csrf", owner["csrf"])
    sent = await client.post("/chat", data=data, headers=cookie_of(owner), allow_redirects=False)
    assert sent.status == 303


async def test_only_the_sender_fetches_their_file_and_sees_it_in_their_history(client):
    client, services = client
    owner = await sign_up(client, "ada", "Ash")
    child = await add_child(client, owner, "ben")
    stranger = await sign_up(client, "cy", "Cedar")
    db: Database = services.db
    row = db.query_one("SELECT id, family_id FROM accounts WHERE email = 'ada@example.org'")
    family, member = uuid.UUID(row["family_id"]), uuid.UUID(row["id"])
    photo = services.chat.store.add_user_message(family, member, "", "Ada", None, Upload("image/png", PNG))
    voice = services.chat.store.add_user_message(family, member, "", "Ada", None, Upload("audio/webm", b"v"))
    words = services.chat.store.add_user_message(family, member, "just words", "Ada")
    assert photo.to_json()["media_url"] == f"/v1/chat/media/{photo.id}" and photo.media_bytes == len(PNG)

    async def status(path: str, headers: dict[str, str]) -> int:
        resp = await client.get(path, headers=cookie_of(headers), allow_redirects=False)
        return resp.status

    for base in ("/v1/chat/media", "/chat/media"):
        # The sender's request goes on to the family's volume (its runtime: none runs here).
        assert await status(f"{base}/{photo.id}", owner) == 503
        # Another member of the family, another family, a message with no file, no id: 404.
        assert await status(f"{base}/{photo.id}", child) == 404
        assert await status(f"{base}/{photo.id}", stranger) == 404
        assert await status(f"{base}/{words.id}", owner) == 404
        assert await status(f"{base}/{uuid.uuid4().hex}", owner) == 404
    assert (await client.get(f"/v1/chat/media/{photo.id}")).status == 401
    assert (await client.get(f"/chat/media/{photo.id}", allow_redirects=False)).status == 303

    page = await (await client.get("/chat", headers=cookie_of(owner))).text()
    assert f'<img class="media" src="/chat/media/{photo.id}"' in page
    assert f'<audio class="media" controls preload="none" src="/chat/media/{voice.id}"' in page
    history = await (await client.get("/v1/chat/messages", headers=cookie_of(owner))).json()
    assert [m["media_type"] for m in history["messages"]] == ["image/png", "audio/webm", None]
    assert "/chat/media/" not in await (await client.get("/chat", headers=cookie_of(child))).text()
