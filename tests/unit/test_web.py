"""The pages in process, on a real database: first run, cookies, CSRF, forms, headers."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_services import offline_services

from sudo_api.app import build_app
from sudo_api.context import SERVICES
from sudo_core import backups, usage
from sudo_core.accounts import Accounts
from sudo_core.config import Settings
from sudo_core.db import Database

PASSWORD = "a long password"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Database]]:
    async with (
        offline_services(tmp_path, "service") as services,
        TestClient(TestServer(build_app(services))) as test_client,
    ):
        yield test_client, services.db


def session_cookie(resp) -> str:
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "Secure" in header and "SameSite=Lax" in header, header
    return re.search(r"sudo_session=([^;]+)", header).group(1)


async def csrf_of(client: TestClient, cookie: str, path: str) -> str:
    resp = await client.get(path, headers={"Cookie": f"sudo_session={cookie}"})
    assert resp.status == 200
    return re.search(r'name="csrf" value="([^"]+)"', await resp.text()).group(1)


async def test_first_run_creates_the_admin_once_with_the_setup_token(client):
    client, db = client
    token = client.app[SERVICES].setup_token
    resp = await client.get("/login", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/setup"
    admin = {"email": "root@example.org", "password": PASSWORD, "name": "Root"}
    # Without the token printed at start, the first visitor is not the admin.
    for query in ("", "?token=guessed"):
        page = await client.get(f"/setup{query}")
        assert page.status == 403 and "sudoctl create-admin" in await page.text()
    assert (await client.post("/setup", data=admin | {"token": "guessed"})).status == 403
    assert not db.query("SELECT * FROM accounts")

    page = await client.get(f"/setup?token={token}")
    assert page.status == 200 and f'name="token" value="{token}"' in await page.text()
    resp = await client.post("/setup", data=admin | {"password": "short", "token": token})
    assert resp.status == 400 and "at least 10 characters" in await resp.text()
    assert not db.query("SELECT * FROM accounts")
    resp = await client.post("/setup", data=admin | {"token": token}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin"
    session_cookie(resp)
    assert [r["is_admin"] for r in db.query("SELECT is_admin FROM accounts")] == [1]
    assert (await client.get(f"/setup?token={token}")).status == 404  # gone once there is an admin
    assert (await client.get("/login")).status == 200


async def test_forms_posted_from_another_site_are_refused(client):
    """Login CSRF: a cross-site form would log the victim into the attacker's family."""
    client, db = client
    form = {"email": "eve@example.org", "password": PASSWORD, "name": "Eve", "family_name": "Eve"}
    await client.post("/signup", data=form, allow_redirects=False)
    login = {"email": "eve@example.org", "password": PASSWORD}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        resp = await client.post("/login", data=login, headers=headers, allow_redirects=False)
        assert resp.status == 403 and "Set-Cookie" not in resp.headers, headers
        signup = form | {"email": "victim@example.org"}
        assert (await client.post("/signup", data=signup, headers=headers)).status == 403
    assert db.query_one("SELECT count(*) FROM accounts")[0] == 1
    same = {"Origin": f"http://{client.host}:{client.port}", "Sec-Fetch-Site": "same-origin"}
    resp = await client.post("/login", data=login, headers=same, allow_redirects=False)
    assert resp.status == 303 and session_cookie(resp)


@pytest.mark.parametrize(
    ("next_", "to"),
    [
        ("/family", "/family"),
        ("/chat?x=1", "/chat?x=1"),
        ("/\t/evil.example", "/chat"),
        ("/\\evil.example", "/chat"),
        ("//evil.example", "/chat"),
        ("/\n/evil.example/x", "/chat"),
        ("https://evil.example", "/chat"),
        ("javascript:alert(1)", "/chat"),
    ],
)
async def test_after_login_only_a_local_path(client, next_, to):
    client, _ = client
    form = {"email": "ned@example.org", "password": PASSWORD, "name": "Ned", "family_name": "Ned"}
    await client.post("/signup", data=form, allow_redirects=False)
    resp = await client.post(
        "/login", data={"email": form["email"], "password": PASSWORD, "next": next_}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == to, (next_, resp.headers["Location"])


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


async def test_login_form_errors_and_admin_pages_are_for_admins(client, tmp_path: Path):
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
    assert "Backups: no nightly backup has run yet" in text
    failed = backups.Status(
        last_run_at=time.time(), ok=False, families=2, failed=1, error="1 of 3 families failed"
    )
    backups.write_status(tmp_path, failed)
    text = await (await client.get("/admin", headers=admin)).text()
    assert (
        "Backups: FAILED, 2 families in the last run,\n  last success never: 1 of 3 families failed." in text
    )
    settings = await client.get("/admin/settings", headers=admin)
    assert settings.status == 200 and "LLM API key" in await settings.text()


async def act(client: TestClient, cookie: str, path: str, **data: str):
    """Post one of a page's forms, as the browser would: with the page's CSRF token."""
    csrf = await csrf_of(client, cookie, path)
    return await client.post(
        path, data=data | {"csrf": csrf}, headers={"Cookie": f"sudo_session={cookie}"}, allow_redirects=False
    )


async def log_in(client: TestClient, login: str, password: str = PASSWORD) -> str:
    resp = await client.post("/login", data={"email": login, "password": password}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    return session_cookie(resp)


def link_in(html: str, element: str) -> str:
    """The path of the link an element with this id shows."""
    return re.search(rf'id="{element}" href="https?://[^/"]+(/[^"]+)"', html).group(1)


async def test_a_parent_invites_an_adult_and_adds_a_child_who_cannot_invite(client):
    client, db = client
    form = {"email": "owner@example.org", "password": PASSWORD, "name": "Olive", "family_name": "The Oaks"}
    owner = session_cookie(await client.post("/signup", data=form, allow_redirects=False))

    invited = await act(client, owner, "/family", action="invite")
    html = await invited.text()
    assert invited.status == 200 and '<div id="invite-qr" class="qr"><svg' in html  # drawn here
    join = link_in(html, "invite-link")
    page = await client.get(join)
    assert page.status == 200 and "Join The Oaks" in await page.text()
    joined = await client.post(
        join,
        data={"name": "Adam", "email": "adam@example.org", "password": PASSWORD},
        allow_redirects=False,
    )
    assert joined.status == 303 and joined.headers["Location"] == "/chat"
    adult = session_cookie(joined)
    assert (await client.get(join)).status == 404  # single use

    short = await act(
        client, adult, "/family", action="add-child", name="Cy", username="cy", password="short"
    )
    assert short.status == 400 and "at least 10 characters" in await short.text()
    added = await act(
        client, adult, "/family", action="add-child", name="Cy", username="cy", password=PASSWORD
    )
    assert added.status == 200 and "Cy can now log in as cy" in await added.text()
    child = await log_in(client, "cy")
    page = await (await client.get("/family", headers={"Cookie": f"sudo_session={child}"})).text()
    assert "Adam" in page and "Create an invitation link" not in page and "Add child" not in page
    refused = await act(client, child, "/family", action="invite")
    assert refused.status == 403 and "parents" in await refused.text()
    left = await act(client, child, "/family", action="leave")
    assert left.status == 403
    roles = {r["display_name"]: r["role"] for r in db.query("SELECT display_name, role FROM accounts")}
    assert roles == {"Olive": "owner", "Adam": "adult", "Cy": "child"}
    assert db.query_one("SELECT COUNT(*) AS n FROM invitations WHERE used_at IS NULL")["n"] == 0


async def test_the_owner_runs_the_family_and_an_adult_only_part_of_it(client):
    client, db = client
    form = {"email": "o@example.org", "password": PASSWORD, "name": "Olive", "family_name": "Oaks"}
    owner = session_cookie(await client.post("/signup", data=form, allow_redirects=False))
    join = link_in(await (await act(client, owner, "/family", action="invite")).text(), "invite-link")
    adult = session_cookie(
        await client.post(
            join, data={"name": "Adam", "email": "a@example.org", "password": PASSWORD}, allow_redirects=False
        )
    )
    await act(client, owner, "/family", action="add-child", name="Cy", username="cy", password=PASSWORD)
    ids = {r["display_name"]: r["id"] for r in db.query("SELECT id, display_name FROM accounts")}

    # An adult may not remove anyone, nor reset the owner's password; the owner may.
    assert (await act(client, adult, "/family", action="remove", member_id=ids["Cy"])).status == 403
    assert (await act(client, adult, "/family", action="reset", member_id=ids["Olive"])).status == 403
    made = await act(client, owner, "/family", action="reset", member_id=ids["Cy"])
    reset = link_in(await made.text(), "reset-link")
    assert "A new password for Cy" in await (await client.get(reset)).text()
    done = await client.post(reset, data={"password": "a new long password"}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/chat"
    assert (await client.get(reset)).status == 404  # used up
    await log_in(client, "cy", "a new long password")

    changed = await act(client, owner, "/family", action="set-role", member_id=ids["Cy"], role="adult")
    assert changed.status == 400 and "needs an email address" in await changed.text()
    handed = await act(client, owner, "/family", action="transfer", member_id=ids["Adam"])
    assert handed.status == 200 and "Adam is now the family" in await handed.text()
    removed = await act(client, adult, "/family", action="remove", member_id=ids["Olive"])
    assert removed.status == 200
    assert (
        await client.get("/family", headers={"Cookie": f"sudo_session={owner}"}, allow_redirects=False)
    ).status == 303

    wrong = await act(client, adult, "/family", action="delete-family", name="Elms")
    assert wrong.status == 400 and db.query_one("SELECT COUNT(*) AS n FROM families")["n"] == 1
    page = await (await client.get("/family", headers={"Cookie": f"sudo_session={adult}"})).text()
    assert "Delete the family" in page and "Leave this family" not in page


async def test_account_page_changes_the_password_and_ends_other_sessions(client):
    client, _ = client
    form = {"email": "ann@example.org", "password": PASSWORD, "name": "Ann", "family_name": "Smith"}
    first = session_cookie(await client.post("/signup", data=form, allow_redirects=False))
    second = await log_in(client, "ann@example.org")
    page = await (await client.get("/account", headers={"Cookie": f"sudo_session={first}"})).text()
    assert page.count('<tr id="s-') == 2 and "this one" in page

    wrong = await act(
        client, first, "/account", action="password", current="not it at all", password="x" * 12
    )
    assert wrong.status == 400
    renamed = await act(client, first, "/account", action="profile", name="Annie", email="ann@example.org")
    assert renamed.status == 200 and "Annie" in await renamed.text()
    changed = await act(client, first, "/account", action="password", current=PASSWORD, password="x" * 12)
    assert changed.status == 200 and "every other session has ended" in await changed.text()
    gone = await client.get("/chat", headers={"Cookie": f"sudo_session={second}"}, allow_redirects=False)
    assert gone.status == 303 and gone.headers["Location"].startswith("/login")
    await log_in(client, "ann@example.org", "x" * 12)


async def test_sign_up_by_invitation_and_the_admin_page(client):
    client, db = client
    services = client.app[SERVICES]
    services.accounts.signup = "invite"
    page = await client.get("/signup")
    assert "by invitation" in await page.text() and 'action="/signup"' not in await page.text()
    form = {"email": "x@example.org", "password": PASSWORD, "name": "X", "family_name": "Xs"}
    refused = await client.post("/signup", data=form)
    assert refused.status == 403 and not db.query("SELECT * FROM families")

    await Accounts(db, 1).sign_up("admin@example.org", PASSWORD, "Admin", None, is_admin=True)
    admin = await log_in(client, "admin@example.org")
    join = link_in(await (await act(client, admin, "/admin", action="invite")).text(), "invite-link")
    page = await client.get(join)
    assert "Family name" in await page.text()
    new = await client.post(join, data=form | {"family_name": "The Newcomers"}, allow_redirects=False)
    assert new.status == 303
    member = session_cookie(new)
    family = db.query_one("SELECT id FROM families WHERE name = 'The Newcomers'")["id"]

    # The admin's own provisioner is absent here: disabling still marks the family, and says so.
    disabled = await act(client, admin, "/admin", action="disable", family_id=family)
    assert disabled.status == 502 and "could not be stopped" in await disabled.text()
    blocked = await client.get("/chat", headers={"Cookie": f"sudo_session={member}"})
    assert blocked.status == 403 and "disabled" in await blocked.text()
    page = await (await client.get("/admin", headers={"Cookie": f"sudo_session={admin}"})).text()
    assert f'id="f-{family}"' in page and ">disabled<" in page

    made = await act(client, admin, "/admin", action="reset", login="x@example.org")
    assert link_in(await made.text(), "reset-link").startswith("/reset/")
    unknown = await act(client, admin, "/admin", action="reset", login="nobody@example.org")
    assert unknown.status == 400 and "no account" in await unknown.text()


async def test_forgot_password_by_whatsapp_says_nothing_of_unlinked_numbers(client):
    client, _ = client
    bad = await client.post("/forgot", data={"action": "send", "number": "12345"})
    assert bad.status == 400
    sent = await client.post("/forgot", data={"action": "send", "number": "+447700900123"})
    text = await sent.text()
    assert sent.status == 202 and "If +447700900123 is linked" in text and 'name="code"' in text
    wrong = await client.post(
        "/forgot", data={"action": "reset", "number": "+447700900123", "code": "000000", "password": PASSWORD}
    )
    assert wrong.status == 400 and "wrong or expired code" in await wrong.text()


async def test_a_reset_code_with_no_twilio_says_so_on_both_front_ends(client):
    """A linked number asks for a code on a host whose Twilio is not configured: 503 and why,
    on the page and on /v1 alike (the use case raises; each front end says it its way)."""
    client, db = client
    form = {"email": "tess@example.org", "password": PASSWORD, "name": "Tess", "family_name": "Tesla"}
    await client.post("/signup", data=form, allow_redirects=False)
    member = db.query_one("SELECT id, family_id FROM accounts WHERE email = ?", ("tess@example.org",))
    db.execute(
        "INSERT INTO whatsapp_numbers (id, family_id, account_id, number, created_at, verified_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (uuid.uuid4().hex, member["family_id"], member["id"], "+447700900124", time.time(), time.time()),
    )
    page = await client.post("/forgot", data={"action": "send", "number": "+447700900124"})
    assert page.status == 503 and "Twilio" in await page.text()
    api = await client.post("/v1/auth/reset/whatsapp", json={"number": "+447700900124"})
    body = await api.json()
    assert api.status == 503 and "Twilio" in body["error"], body


async def test_a_family_past_its_message_rate_waits_and_its_words_stay(client):
    """Sixty messages at once from two members of one family: the family's rate lets exactly
    its number through, the rest are 429 with the wait; the page keeps what was typed; another
    family is not held back."""
    client, db = client
    form = {"email": "rita@example.org", "password": PASSWORD, "name": "Rita", "family_name": "Rapid"}
    owner = session_cookie(await client.post("/signup", data=form, allow_redirects=False))
    await act(client, owner, "/family", action="add-child", name="Ray", username="ray", password=PASSWORD)
    child = await log_in(client, "ray")
    form = {"email": "sam@example.org", "password": PASSWORD, "name": "Sam", "family_name": "Slow"}
    other = session_cookie(await client.post("/signup", data=form, allow_redirects=False))

    tokens = {cookie: await csrf_of(client, cookie, "/chat") for cookie in (owner, child, other)}

    async def send(cookie: str, text: str):  # as the chat page's script does
        headers = {"Cookie": f"sudo_session={cookie}", "X-CSRF-Token": tokens[cookie]}
        return await client.post("/v1/chat/messages", json={"text": text}, headers=headers)

    limit = Settings().api.family_messages_per_minute
    sent = await asyncio.gather(*(send(owner if i % 2 else child, f"message {i}") for i in range(60)))
    assert sorted(r.status for r in sent) == [202] * limit + [429] * (60 - limit)
    refused = next(r for r in sent if r.status == 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert "many messages this minute" in (await refused.json())["error"]
    assert db.query_one("SELECT COUNT(*) AS n FROM messages WHERE role = 'user'")["n"] == limit

    page = await act(client, owner, "/chat", text="one more, kept")
    assert page.status == 429 and ">one more, kept</textarea>" in await page.text()
    assert (await send(other, "hello")).status == 202


async def test_a_family_past_its_storage_quota_is_told_and_its_messages_wait(client):
    """As the reaper last measured it: past the quota, sending is refused with 507 and the reason
    (the page keeps the draft), /family and /v1/family say so; measured under it again (the admin
    raised the quota), messages flow. Nothing stored is touched either way."""
    client, db = client
    form = {"email": "fay@example.org", "password": PASSWORD, "name": "Fay", "family_name": "Full"}
    cookie = session_cookie(await client.post("/signup", data=form, allow_redirects=False))
    family = uuid.UUID(db.query_one("SELECT family_id FROM accounts WHERE email = ?", (form["email"],))[0])
    headers = {"Cookie": f"sudo_session={cookie}", "X-CSRF-Token": await csrf_of(client, cookie, "/chat")}
    sent = await client.post("/v1/chat/messages", json={"text": "before"}, headers=headers)
    assert sent.status == 202

    usage.record_volumes(db, {family: 3 * 2**30}, 2 * 2**30, time.time())
    refused = await client.post("/v1/chat/messages", json={"text": "after"}, headers=headers)
    assert refused.status == 507 and "storage is full (3.0 GB of 2.0 GB)" in (await refused.json())["error"]
    page = await act(client, cookie, "/chat", text="kept in the box")
    assert page.status == 507 and ">kept in the box</textarea>" in await page.text()
    shown = await (await client.get("/family", headers={"Cookie": f"sudo_session={cookie}"})).text()
    assert "3.0 GB of the 2.0 GB" in shown and "new messages wait" in shown
    storage = (await (await client.get("/v1/family", headers=headers)).json())["usage"]["storage"]
    assert storage["bytes"] == 3 * 2**30 and storage["over_quota"] is True
    assert [r["text"] for r in db.query("SELECT text FROM messages")] == ["before"]

    usage.record_volumes(db, {family: 3 * 2**30}, 4 * 2**30, time.time())
    assert (await client.post("/v1/chat/messages", json={"text": "after"}, headers=headers)).status == 202
