"""The pages in process, on a real database: first run, cookies, CSRF, forms, headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sudo_api.app import build_app
from sudo_api.chat import Conversations
from sudo_api.context import Services
from sudo_api.devices import Devices
from sudo_api.fleet import FleetRestart
from sudo_api.limits import LoginLimiter
from sudo_api.numbers import Numbers
from sudo_api.whatsapp import WhatsApp
from sudo_core.accounts import Accounts
from sudo_core.config import Settings
from sudo_core.db import Database
from sudo_core.provisioner_client import ProvisionerClient

PASSWORD = "a long password"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Database]]:
    settings = Settings()
    db = Database(tmp_path / "sudo.db")
    provisioner = ProvisionerClient(tmp_path / "nobody.sock")  # no provisioner: nothing here needs one
    services = Services(
        settings=settings,
        db=db,
        provisioner=provisioner,
        accounts=Accounts(db, 1),
        limiter=LoginLimiter(5, 50, 300),
        chat=Conversations(db, provisioner, b"secret", settings.api),
        devices=Devices(db, provisioner, settings.api),
        fleet=FleetRestart(provisioner),
        numbers=Numbers(db),
        whatsapp=WhatsApp(db, provisioner, b"secret", settings.api),
        secret=b"secret",
        service_token="service",
    )
    async with TestClient(TestServer(build_app(services))) as test_client:
        yield test_client, db
    await services.chat.stop()
    await services.whatsapp.stop()
    await provisioner.close()
    db.close()


def session_cookie(resp) -> str:
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "Secure" in header and "SameSite=Lax" in header, header
    return re.search(r"sudo_session=([^;]+)", header).group(1)


async def csrf_of(client: TestClient, cookie: str, path: str) -> str:
    resp = await client.get(path, headers={"Cookie": f"sudo_session={cookie}"})
    assert resp.status == 200
    return re.search(r'name="csrf" value="([^"]+)"', await resp.text()).group(1)


async def test_first_run_creates_the_admin_once(client):
    client, db = client
    resp = await client.get("/login", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/setup"
    resp = await client.post(
        "/setup", data={"email": "root@example.org", "password": "short", "name": "Root"}
    )
    assert resp.status == 400 and "at least 10 characters" in await resp.text()
    assert not db.query("SELECT * FROM accounts")
    resp = await client.post(
        "/setup",
        data={"email": "root@example.org", "password": PASSWORD, "name": "Root"},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/admin"
    session_cookie(resp)
    assert [r["is_admin"] for r in db.query("SELECT is_admin FROM accounts")] == [1]
    assert (await client.get("/setup")).status == 404  # gone once there is an admin
    assert (await client.get("/login")).status == 200


async def test_pages_need_a_login_and_every_form_its_csrf_token(client):
    client, db = client
    resp = await client.get("/chat", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login?next=/chat"
    form = {"email": "ann@example.org", "password": PASSWORD, "name": "Ann", "family_name": "Smith"}
    resp = await client.post("/signup", data=form, allow_redirects=False)
    assert resp.status == 303
    cookie = session_cookie(resp)
    headers = {"Cookie": f"sudo_session={cookie}"}
    page = await client.get("/chat", headers=headers)
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "cdn" not in (await page.text()).lower()

    forged = await client.post("/chat", data={"text": "hi"}, headers=headers)
    assert forged.status == 403
    assert not db.query("SELECT * FROM messages")
    csrf = await csrf_of(client, cookie, "/chat")
    sent = await client.post(
        "/chat", data={"text": "hi", "csrf": csrf}, headers=headers, allow_redirects=False
    )
    assert sent.status == 303
    assert [r["text"] for r in db.query("SELECT text FROM messages")] == ["hi"]
    page = await client.get("/chat", headers=headers)
    assert '<div class="text">hi</div>' in await page.text()

    # What a family typed is shown as text, never as markup.
    csrf = await csrf_of(client, cookie, "/chat")
    await client.post("/chat", data={"text": "<script>alert(1)</script>", "csrf": csrf}, headers=headers)
    assert "<script>alert(1)" not in await (await client.get("/chat", headers=headers)).text()

    assert (await client.post("/logout", headers=headers)).status == 403
    resp = await client.post("/logout", data={"csrf": csrf}, headers=headers, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/chat", headers=headers, allow_redirects=False)).status == 303


async def test_login_form_errors_and_admin_pages_are_for_admins(client):
    client, db = client
    form = {"email": "bo@example.org", "password": PASSWORD, "name": "Bo", "family_name": "Bo"}
    cookie = session_cookie(await client.post("/signup", data=form, allow_redirects=False))
    await Accounts(db, 1).sign_up("admin@example.org", PASSWORD, "Admin", None, is_admin=True)
    wrong = await client.post("/login", data={"email": "bo@example.org", "password": "nope nope nope"})
    assert wrong.status == 401 and "wrong email, username or password" in await wrong.text()
    assert (await client.get("/admin", headers={"Cookie": f"sudo_session={cookie}"})).status == 403
    assert (
        await client.get("/v1/admin/settings", headers={"Cookie": f"sudo_session={cookie}"})
    ).status == 403
    resp = await client.post(
        "/login",
        data={"email": "admin@example.org", "password": PASSWORD, "next": "//evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/admin"  # never off-site
    admin = {"Cookie": f"sudo_session={session_cookie(resp)}"}
    page = await client.get("/admin", headers=admin)
    text = await page.text()
    assert page.status == 200 and "Bo" in text and "cannot ask systemd" in text  # no bus here: said so
    settings = await client.get("/admin/settings", headers=admin)
    assert settings.status == 200 and "LLM API key" in await settings.text()
