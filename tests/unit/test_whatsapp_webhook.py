"""Twilio's webhooks in process, on a real database: signatures over the URL Twilio called
(behind Caddy), refusals that store nothing, MessageSid deduplication, the strangers' limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import twilio_stub
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from provisioner_socket import serving
from test_web import client as web_client  # noqa: F401 (the in-process app, as a fixture)
from twilio.request_validator import RequestValidator

from sudo_api.context import SERVICES
from sudo_api.numbers import Numbers
from sudo_core import usage
from sudo_core.config import ApiSettings, Settings
from sudo_core.db import Database
from sudo_core.provisioner_client import RuntimeView

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://sudo.example.org/v1/whatsapp/inbound"
LINKED = "+447700900123"


@pytest.fixture
async def client(web_client) -> AsyncIterator[tuple[TestClient, Database, uuid.UUID]]:  # noqa: F811
    """test_web's app on a real database, with Twilio's token set and one linked number."""
    test_client, db = web_client
    db.set_setting("twilio.auth_token", TOKEN)
    family = db.create_family("Lovelace")
    db.execute(
        "INSERT INTO whatsapp_numbers (id, family_id, number, created_at, verified_at)"
        " VALUES (?, ?, ?, ?, ?)",
        ("n1", str(family.id), LINKED, time.time(), time.time()),
    )
    yield test_client, db, family.id


def inbound(sender: str = LINKED, sid: str | None = None, body: str = "hello") -> dict[str, str]:
    return {
        "MessageSid": sid or "SM" + uuid.uuid4().hex,
        "AccountSid": "AC" + "0" * 32,
        "From": f"whatsapp:{sender}",
        "To": "whatsapp:+14155550100",
        "Body": body,
        "NumMedia": "0",
        "ProfileName": "Ada",
    }


async def post(client: TestClient, form: dict[str, str], signature: str | None, **headers: str):
    caddy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sudo.example.org"}
    headers = caddy | headers | ({"X-Twilio-Signature": signature} if signature is not None else {})
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return await client.post("/v1/whatsapp/inbound", data=urlencode(form), headers=headers)


def inbox(db: Database) -> list[str]:
    return [r["sid"] for r in db.query("SELECT sid FROM whatsapp_inbox ORDER BY received_at")]


def test_twilio_documentation_vector_holds_for_the_library_we_validate_with():
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    validator = RequestValidator("12345")
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert validator.compute_signature(url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert not validator.validate(url, params | {"Digits": "1235"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


async def test_a_signed_message_is_stored_once_and_answered_with_empty_twiml(client):
    test_client, db, family = client
    form = inbound()
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC, form)
    for _ in range(3):  # Twilio retrying a webhook it thinks failed
        resp = await post(test_client, form, signature)
        assert resp.status == 200
        assert resp.content_type == "application/xml"
        assert (await resp.text()).endswith("<Response></Response>")
    assert inbox(db) == [form["MessageSid"]]
    row = db.query_one("SELECT * FROM whatsapp_inbox")
    assert (row["family_id"], row["number"], row["body"], row["status"]) == (
        str(family),
        LINKED,
        "hello",
        "received",
    )


async def test_bad_or_missing_signatures_are_refused_and_store_nothing(client):
    test_client, db, _ = client
    form = inbound()
    good = RequestValidator(TOKEN).compute_signature(PUBLIC, form)
    cases = [
        (form, None, {}),  # no signature at all
        (form, "", {}),
        (form, RequestValidator("another token").compute_signature(PUBLIC, form), {}),
        (form | {"Body": "changed on the way"}, good, {}),  # a parameter altered
        # signed for another host: Caddy's forwarded host is what Twilio called
        (form, good, {"X-Forwarded-Host": "evil.example.org"}),
        (form, good, {"X-Forwarded-Proto": "http"}),
    ]
    for sent, signature, headers in cases:
        resp = await post(test_client, sent, signature, **headers)
        assert resp.status == 403, (signature, headers)
        assert "X-Twilio-Signature" in (await resp.json())["error"]
    assert inbox(db) == []


async def test_forwarded_headers_count_only_from_a_trusted_proxy(client):
    test_client, db, _ = client
    form = inbound()
    # The test client connects from 127.0.0.1, a trusted proxy by default: Caddy's headers count.
    assert (
        await post(test_client, form, RequestValidator(TOKEN).compute_signature(PUBLIC, form))
    ).status == 200
    # Trusting no proxy, the same headers are ignored: only the URL as received is valid.
    test_client.server.app[SERVICES].settings = Settings(api=ApiSettings(trusted_proxies=()))
    second = inbound()
    resp = await post(test_client, second, RequestValidator(TOKEN).compute_signature(PUBLIC, second))
    assert resp.status == 403
    direct = str(test_client.make_url("/v1/whatsapp/inbound"))
    resp = await post(test_client, second, RequestValidator(TOKEN).compute_signature(direct, second))
    assert resp.status == 200
    assert inbox(db) == [form["MessageSid"], second["MessageSid"]]


async def test_unknown_numbers_are_kept_out_and_answered_at_most_once_a_day(client):
    test_client, db, _ = client
    for _ in range(3):
        form = inbound(sender="+15005550006")
        resp = await post(test_client, form, RequestValidator(TOKEN).compute_signature(PUBLIC, form))
        assert resp.status == 200
    assert inbox(db) == []
    rows = db.query("SELECT * FROM whatsapp_strangers")
    assert [r["number"] for r in rows] == ["+15005550006"]
    first = rows[0]["replied_at"]
    # Only one reply was due: a second would have moved replied_at.
    assert db.query_one("SELECT replied_at FROM whatsapp_strangers")[0] == first


async def test_malformed_and_oversized_webhooks_are_refused(client):
    test_client, db, _ = client
    form = inbound()
    del form["MessageSid"]
    resp = await post(test_client, form, RequestValidator(TOKEN).compute_signature(PUBLIC, form))
    assert resp.status == 400
    big = inbound(body="x" * 70_000)
    resp = await post(test_client, big, RequestValidator(TOKEN).compute_signature(PUBLIC, big))
    assert resp.status == 413
    assert inbox(db) == []


async def test_status_callbacks_are_checked_the_same_way_and_recorded(client):
    test_client, db, family = client
    now = time.time()
    db.execute(
        "INSERT INTO whatsapp_outbound (id, family_id, number, body, status, sid, created_at, updated_at)"
        " VALUES ('m', ?, ?, 'hi', 'queued', 'SMout', ?, ?)",
        (str(family), LINKED, now, now),
    )
    url = "https://sudo.example.org/v1/whatsapp/status"
    caddy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sudo.example.org"}

    async def callback(status: str, signature_token: str = TOKEN, **extra: str) -> int:
        form = {"MessageSid": "SMout", "MessageStatus": status, **extra}
        headers = caddy | {
            "X-Twilio-Signature": RequestValidator(signature_token).compute_signature(url, form)
        }
        resp = await test_client.post("/v1/whatsapp/status", data=form, headers=headers)
        return resp.status

    assert await callback("failed", signature_token="forged") == 403
    assert await callback("delivered") == 200
    assert await callback("sent") == 200  # late and out of order: does not undo "delivered"
    assert db.query_one("SELECT status FROM whatsapp_outbound")[0] == "delivered"
    assert await callback("undelivered", ErrorCode="63016", ErrorMessage="outside the window") == 200
    row = db.query_one("SELECT status, error FROM whatsapp_outbound")
    assert row["status"] == "undelivered" and "63016" in row["error"]


def hold(db: Database, family: uuid.UUID, number: str, body: str) -> str:
    """A message the family's agent wrote to the number outside WhatsApp's window: held."""
    message_id = f"{family.hex}:{uuid.uuid4().hex}"
    db.execute(
        "INSERT INTO whatsapp_outbound (id, family_id, number, body, status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'held', ?, ?)",
        (message_id, str(family), number, body, time.time(), time.time()),
    )
    return message_id


@contextlib.asynccontextmanager
async def twilio_at(db: Database, directory: Path) -> AsyncIterator[Path]:
    """Twilio's REST API (the stand-in) set up for the host; yields the log of what it was sent."""
    account, sent = "AC" + "0" * 32, directory / "twilio.jsonl"
    async with TestServer(twilio_stub.build_app(sent, account, TOKEN)) as twilio:
        for key, value in {
            "account_sid": account,
            "whatsapp_from": "+14155550100",
            "api_base": str(twilio.make_url("")).rstrip("/"),
        }.items():
            db.set_setting(f"twilio.{key}", value)
        yield sent


def status_of(db: Database, message_id: str) -> str | None:
    row = db.query_one("SELECT status FROM whatsapp_outbound WHERE id = ?", (message_id,))
    return row["status"] if row else None


async def test_what_was_held_for_a_number_goes_only_to_the_family_that_links_it(client, tmp_path):
    test_client, db, family = client
    unlinked = hold(db, family, LINKED, "the dentist is at nine")
    assert Numbers(db).remove(family, "n1", None)
    assert status_of(db, unlinked) is None, "unlinking the number drops what was held for it"

    # Held before the number was let go (an older host), and the number now another family's.
    stale = hold(db, family, LINKED, "the Lovelaces' secret")
    other = db.create_family("Babbage")
    db.execute(
        "INSERT INTO whatsapp_numbers (id, family_id, number, created_at, verified_at)"
        " VALUES (?, ?, ?, ?, ?)",
        ("n2", str(other.id), LINKED, time.time(), time.time()),
    )
    hold(db, other.id, LINKED, "for the Babbages")
    async with twilio_at(db, tmp_path) as sent:
        form = inbound()  # the number writes: WhatsApp's window is open again
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC, form)
        assert (await post(test_client, form, signature)).status == 200
        for _ in range(100):  # the release runs in the background
            if sent.exists() and sent.read_text():
                break
            await asyncio.sleep(0.05)
    bodies = [json.loads(line)["body"] for line in sent.read_text().splitlines()]
    assert bodies == ["for the Babbages"], "only what the family that links the number held"
    assert status_of(db, stale) == "held"


async def test_past_the_family_message_rate_a_number_is_told_once_a_minute(client, tmp_path):
    """The family's rate holds on WhatsApp too (shared with the web): what is past it is not
    stored for the agent, and the number hears why once, not once per message."""
    test_client, db, _ = client
    limit = Settings().api.family_messages_per_minute
    async with twilio_at(db, tmp_path) as sent:
        forms = [inbound(body=f"message {i}") for i in range(limit + 10)]
        signed = [RequestValidator(TOKEN).compute_signature(PUBLIC, form) for form in forms]
        answers = await asyncio.gather(*(post(test_client, f, s) for f, s in zip(forms, signed, strict=True)))
        assert {r.status for r in answers} == {200}  # Twilio must not retry what was refused
        for _ in range(100):  # the notice goes out in the background
            if sent.exists() and sent.read_text():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a second notice, which must not come
    assert len(inbox(db)) == limit
    bodies = [json.loads(line)["body"] for line in sent.read_text().splitlines()]
    assert len(bodies) == 1 and "many messages this minute" in bodies[0], bodies


async def test_past_the_storage_quota_a_number_is_told_its_message_waits(client, tmp_path):
    test_client, db, family = client
    usage.record_volumes(db, {family: 3 * 2**30}, 2**30, time.time())
    async with twilio_at(db, tmp_path) as sent:
        for _ in range(2):
            form = inbound()
            assert (
                await post(test_client, form, RequestValidator(TOKEN).compute_signature(PUBLIC, form))
            ).status == 200
        for _ in range(100):
            if sent.exists() and sent.read_text():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert inbox(db) == []
    bodies = [json.loads(line)["body"] for line in sent.read_text().splitlines()]
    assert len(bodies) == 1 and "storage is full (3.0 GB of 1.0 GB)" in bodies[0], bodies


async def test_a_notice_about_a_message_goes_once_however_often_it_is_delivered(client, tmp_path):
    """The family's agent drops the first delivery of a message with a file it cannot read (it
    was restarting): the message is delivered again, and the number is told about the file once."""
    test_client, db, family = client
    svc = test_client.server.app[SERVICES]
    member = svc.accounts.create("not a real hash", "Ada", family, "adult", email="ada@example.org")
    db.execute("UPDATE whatsapp_numbers SET account_id = ? WHERE id = 'n1'", (str(member.id),))
    delivered: list[dict] = []

    async def agent_inbound(request: web.Request) -> web.Response:
        if not delivered:
            delivered.append({})
            request.transport.close()  # dropped mid-request, as a restarting agent does
        else:
            delivered.append(await request.json())
        return web.json_response({}, status=202)

    async def ensure(request: web.Request) -> web.Response:
        url = str(agent.make_url("")).rstrip("/")
        family = uuid.UUID(request.match_info["family"])
        view = RuntimeView(family, "hermes", "running", url, url, url, "sudo-hermes", "h", None)
        return web.json_response(view.to_json())

    agent_app, provisioner = web.Application(), web.Application()
    agent_app.router.add_post("/inbound", agent_inbound)
    provisioner.router.add_post("/v1/runtimes/{family}/ensure", ensure)
    # On the socket the services' provisioner client calls.
    async with (
        serving(provisioner, tmp_path / "nobody.sock"),
        TestServer(agent_app) as agent,
        twilio_at(db, tmp_path) as sent,
    ):
        form = inbound(body="what is this?") | {
            "NumMedia": "1",
            "MediaUrl0": "https://api.twilio.com/media/ME1",
            "MediaContentType0": "video/mp4",
        }
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC, form)
        assert (await post(test_client, form, signature)).status == 200
        for _ in range(200):
            if len(delivered) == 2 and sent.exists() and sent.read_text():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a second notice, which must not come
    assert [d.get("text") for d in delivered] == [None, "what is this?"]
    bodies = [json.loads(line)["body"] for line in sent.read_text().splitlines()]
    assert bodies == ["I can read text, photos and voice notes, but not mp4 files yet."]
