"""Accounts, sessions, CSRF, the login rate limit, devices, and one family never reaching another."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import jwt
import pytest
from control_plane import Family, admin_session, pair, sign_up
from livekit.api import TokenVerifier
from stack import Stack

from sudo_api.api import routes, service_routes
from sudo_api.history import ChatStore
from sudo_core.families import family_of_llm_key


async def test_signup_login_logout(api: Stack, http):
    family = await sign_up(http, api.api_url, "Ride")
    status, body = await family.call("GET", "/v1/me")
    assert status == 200 and body["account"]["name"] == "Ride" and body["account"]["is_admin"] is False
    login = {"email": family.account["email"], "password": "correct horse battery"}
    async with http.post(f"{api.api_url}/v1/auth/login", json=login) as resp:
        assert resp.status == 200
        second = Family(http, api.api_url, (await resp.json())["token"], family.account)
    assert (await second.call("POST", "/v1/auth/logout"))[0] == 204
    assert (await second.call("GET", "/v1/me"))[0] == 401
    assert (await family.call("GET", "/v1/me"))[0] == 200  # only that session ended
    # The database holds no usable session token.
    rows = await api.db.aio(api.db.query, "SELECT token_hash FROM sessions")
    assert family.token not in {r["token_hash"] for r in rows}


async def test_bad_signups_change_nothing(api: Stack, http):
    before = len(await api.db.aio(api.db.list_families))
    good = {"email": "x@example.org", "password": "long enough pw", "name": "X", "family_name": "X"}
    for change in (
        {"email": "not-an-email"},
        {"password": "short"},
        {"name": ""},
        {"family_name": "y" * 300},
        {"email": None},
    ):
        async with http.post(f"{api.api_url}/v1/auth/signup", json=good | change) as resp:
            assert resp.status == 400, change
            assert (await resp.json())["error"]
    taken = await sign_up(http, api.api_url, "Taken")
    async with http.post(
        f"{api.api_url}/v1/auth/signup", json=good | {"email": taken.account["email"].upper()}
    ) as resp:
        assert resp.status == 409 and "already exists" in (await resp.json())["error"]
    assert len(await api.db.aio(api.db.list_families)) == before + 1


async def test_login_attempts_are_rate_limited(api: Stack, http):
    family = await sign_up(http, api.api_url, "Goodall")
    wrong = {"email": family.account["email"], "password": "wrong password!"}
    statuses = []
    for _ in range(api.settings.api.login_attempts + 1):
        async with http.post(f"{api.api_url}/v1/auth/login", json=wrong) as resp:
            statuses.append(resp.status)
            retry_after = resp.headers.get("Retry-After")
    assert statuses == [401] * api.settings.api.login_attempts + [429]
    assert retry_after and int(retry_after) > 0
    right = wrong | {"password": "correct horse battery"}
    async with http.post(f"{api.api_url}/v1/auth/login", json=right) as resp:
        assert resp.status == 429  # even the right password waits: guessing gains nothing


async def test_cookie_sessions_need_the_csrf_token(api: Stack, http):
    family = await sign_up(http, api.api_url, "Sanger")
    cookie = {"Cookie": f"sudo_session={family.token}"}
    url = f"{api.api_url}/v1/chat/messages"
    async with http.post(url, json={"text": "forged"}, headers=cookie) as resp:
        assert resp.status == 403 and "CSRF" in (await resp.json())["error"]
    async with http.get(url, headers=cookie) as resp:
        assert resp.status == 200 and (await resp.json())["messages"] == []  # the forgery stored nothing
    row = await api.db.aio(
        api.db.query_one,
        "SELECT s.csrf FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE a.email = ?",
        (family.account["email"],),
    )
    async with http.post(
        f"{api.api_url}/v1/devices/pairing/complete",
        json={"code": "NOPE42"},
        headers=cookie | {"X-CSRF-Token": row["csrf"]},
    ) as resp:
        assert resp.status == 400  # past the CSRF check, refused for the unknown code


async def test_pairing_heartbeats_and_revocation(api: Stack, http, provisioner):
    family = await sign_up(http, api.api_url, "Yalow")
    device_id, token = await pair(http, api, family, "Kitchen Pi")
    status, body = await family.call("GET", "/v1/devices")
    assert [(d["name"], d["online"]) for d in body["devices"]] == [("Kitchen Pi", False)]

    before = time.time()
    async with http.post(
        f"{api.api_url}/v1/devices/heartbeat", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["next_in"] == api.settings.api.heartbeat_interval_sec
    status, body = await family.call("GET", "/v1/devices")
    assert status == 200 and body["devices"][0]["online"] is True
    assert body["devices"][0]["muted"] is False  # a beat without a body: an older sudo-edge
    # The family muted the device: its beats say so, and the family sees it.
    beat = {"headers": {"Authorization": f"Bearer {token}"}}
    for wrong in ({"muted": "yes"}, ["muted"]):
        async with http.post(f"{api.api_url}/v1/devices/heartbeat", json=wrong, **beat) as resp:
            assert resp.status == 400, wrong
    async with http.post(f"{api.api_url}/v1/devices/heartbeat", json={"muted": True}, **beat) as resp:
        assert resp.status == 200
    status, body = await family.call("GET", "/v1/devices")
    assert body["devices"][0]["muted"] is True
    # The beat woke the runtime without the device waiting for it, and reached the database.
    family_id = uuid.UUID(family.id)
    deadline = time.monotonic() + 120
    while (c := api.container(family_id)) is None or c.status != "running":
        assert time.monotonic() < deadline, "the heartbeat never woke the runtime"
        await asyncio.sleep(0.5)
    deadline = time.monotonic() + 10
    while ((await api.db.aio(api.db.get_family, family_id)).last_active_at or 0) < before:
        assert time.monotonic() < deadline, "the heartbeat never reached the database"
        await asyncio.sleep(0.2)

    assert (await family.call("DELETE", f"/v1/devices/{device_id}"))[0] == 204
    async with http.post(
        f"{api.api_url}/v1/devices/heartbeat", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 401  # revoked: refused at once
    assert (await family.call("DELETE", f"/v1/devices/{device_id}"))[0] == 404
    assert (await family.call("DELETE", "/v1/devices/not-a-uuid"))[0] == 400
    await provisioner.stop(family_id)


async def test_pairing_rejects_bad_codes(api: Stack, http):
    family = await sign_up(http, api.api_url, "Carson")
    for code in ("", "ZZZZZZ", "x" * 30):
        status, body = await family.call("POST", "/v1/devices/pairing/complete", json={"code": code})
        assert status == 400 and body["error"], code
    async with http.post(f"{api.api_url}/v1/devices/pairing", json={"name": ""}) as resp:
        assert resp.status == 400
    async with http.get(
        f"{api.api_url}/v1/devices/pairing", headers={"Authorization": "Bearer sd_dev_unknown"}
    ) as resp:
        assert resp.status == 401


async def test_one_family_cannot_reach_another(api: Stack, http, provisioner):
    alice, bob = await sign_up(http, api.api_url, "Alice"), await sign_up(http, api.api_url, "Bob")
    # Runtimes: the wake endpoint wakes only the caller's own, whatever the request names.
    status, body = await bob.call("POST", f"/v1/runtime/ensure?user_id={alice.id}")
    assert status == 200 and body["state"] == "running"
    assert api.container(uuid.UUID(bob.id)).status == "running"
    assert api.container(uuid.UUID(alice.id)) is None
    await provisioner.stop(uuid.UUID(bob.id))

    device_id, device_token = await pair(http, api, alice, "Alice's Pi")
    store = ChatStore(api.db)
    message = await api.db.aio(
        store.add_user_message, uuid.UUID(alice.id), uuid.UUID(alice.member_id), "alice's secret", "Alice"
    )
    await api.db.aio(store.set_status, message.id, "failed", "test")
    row = {"id": message.id}

    status, body = await bob.call("GET", "/v1/chat/messages")
    assert body["messages"] == []
    status, body = await bob.call("GET", "/v1/devices")
    assert body["devices"] == []
    assert (await bob.call("POST", f"/v1/chat/messages/{row['id']}/retry"))[0] == 404
    assert (await bob.call("DELETE", f"/v1/devices/{device_id}"))[0] == 404
    # What the API does not take: a family named in the request.
    status, body = await bob.call("GET", f"/v1/chat/messages?user_id={alice.id}")
    assert body["messages"] == []
    # Alice's device token is not a session, Bob's session is not a device token.
    async with http.get(
        f"{api.api_url}/v1/chat/messages", headers={"Authorization": f"Bearer {device_token}"}
    ) as resp:
        assert resp.status == 401
    async with http.post(f"{api.api_url}/v1/devices/heartbeat", headers=bob.headers) as resp:
        assert resp.status == 401
    # Alice's things are untouched.
    status, body = await alice.call("GET", "/v1/devices")
    assert [d["id"] for d in body["devices"]] == [device_id]
    status, body = await alice.call("GET", "/v1/chat/messages")
    assert [m["status"] for m in body["messages"]] == ["failed"]


async def test_errors_are_json_and_the_openapi_document_is_complete(api: Stack, http):
    async with http.get(f"{api.api_url}/v1/nope") as resp:
        assert resp.status == 404 and "not an API endpoint" in (await resp.json())["error"]
    async with http.put(f"{api.api_url}/v1/chat/messages") as resp:
        assert resp.status == 405 and (await resp.json())["error"]
    async with http.get(f"{api.api_url}/v1/me") as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "log in first"
    async with http.get(f"{api.api_url}/v1/openapi.json") as resp:
        document = await resp.json()
    served = {(r.method.lower(), r.path) for r in [*routes(), *service_routes()]}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == served
    for path, ops in document["paths"].items():  # each says where it is served
        assert all(
            ("service_listen" in op.get("description", "")) == path.startswith("/v1/service/")
            for op in ops.values()
        ), path
    async with http.get(f"{api.api_url}/healthz") as resp:
        assert resp.status == 200
    host, port = api.settings.api.metrics.rsplit(":", 1)
    async with http.get(f"http://{host}:{port}/metrics") as resp:
        text = await resp.text()
        assert "sudo_api_requests_total" in text and "sudo_api_heartbeats_total" in text


@pytest.mark.usefixtures("fresh_settings")
async def test_voice_tokens_for_paired_devices_only(api: Stack, http):
    family = await sign_up(http, api.api_url, "Bell")
    device_id, token = await pair(http, api, family, "Hall Pi")
    device_auth = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{api.api_url}/v1/voice/token", headers=device_auth) as resp:
        assert resp.status == 503 and "LiveKit" in (await resp.json())["error"]
    secret = secrets.token_hex(32)
    for key, value in (
        ("livekit.url", "wss://voice.example"),
        ("livekit.api_key", "APIkey"),
        ("livekit.api_secret", secret),
    ):
        await api.db.aio(api.db.set_setting, key, value)
    async with http.post(f"{api.api_url}/v1/voice/token", headers=device_auth) as resp:
        assert resp.status == 200
        granted = await resp.json()
    room = f"room_{family.id}_{device_id}"  # its own: the family's other devices never hear it
    assert granted["room"] == room and granted["url"] == "wss://voice.example"
    claims = TokenVerifier("APIkey", secret).verify(granted["token"])
    assert claims.identity == f"device-{device_id}"
    assert claims.video.room_join and claims.video.room == room
    assert claims.video.can_publish and claims.video.can_subscribe and not claims.video.room_admin
    assert [a.agent_name for a in claims.room_config.agents] == ["sudo-voice"]
    # It expires in 15 minutes (the device asks again before then): valid now, not 15 min on.
    raw = jwt.decode(granted["token"], secret, algorithms=["HS256"])
    assert abs(raw["exp"] - time.time() - 900) < 60 and abs(granted["expires_at"] - raw["exp"]) < 2
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(granted["token"], secret, algorithms=["HS256"], leeway=-901, options={"verify_nbf": False})
    with pytest.raises(jwt.InvalidSignatureError):  # signed with the admin's secret, not another
        TokenVerifier("APIkey", secrets.token_hex(32)).verify(granted["token"])
    async with http.post(f"{api.api_url}/v1/voice/token", headers=family.headers) as resp:
        assert resp.status == 401  # a family session is not a device
    other_id, other = await pair(http, api, family, "Attic Pi")
    async with http.post(
        f"{api.api_url}/v1/voice/token", headers={"Authorization": f"Bearer {other}"}
    ) as resp:
        assert (await resp.json())["room"] == f"room_{family.id}_{other_id}" != room


async def test_a_guessed_code_claims_a_device_its_guesser_cannot_confirm(api: Stack, http):
    """The guesser's family is said aloud at the device (its family hears a stranger's name); the
    confirmation code is heard only there; five wrong ones end the pairing, and the device,
    told its token is unknown, asks for a new code. Its token never opened anything."""
    await sign_up(http, api.api_url, "Owner")
    guesser = await sign_up(http, api.api_url, "Mallory")
    async with http.post(f"{api.api_url}/v1/devices/pairing", json={"name": "Nursery Pi"}) as resp:
        started = await resp.json()
    device = {"Authorization": f"Bearer {started['device_token']}"}
    status, claimed = await guesser.call(
        "POST", "/v1/devices/pairing/complete", json={"code": started["code"]}
    )
    assert status == 202 and claimed["pairing"]["device_name"] == "Nursery Pi"
    async with http.get(f"{api.api_url}/v1/devices/pairing", headers=device) as resp:
        said = await resp.json()
    assert said["state"] == "confirming" and said["family_name"] == "Mallory"
    wrong = f"{(int(said['confirm_code']) + 1) % 10**6:06d}"
    pairing = {"pairing_id": claimed["pairing"]["id"], "code": wrong}
    for _ in range(5):
        status, body = await guesser.call("POST", "/v1/devices/pairing/confirm", json=pairing)
        assert status == 400, body
        async with http.post(f"{api.api_url}/v1/voice/token", headers=device) as resp:
            assert resp.status == 401
    assert "new pairing code" in body["error"]
    async with http.get(f"{api.api_url}/v1/devices/pairing", headers=device) as resp:
        assert resp.status == 401  # the pairing is gone: the device starts again
    status, _ = await guesser.call(
        "POST", "/v1/devices/pairing/confirm", json=pairing | {"code": said["confirm_code"]}
    )
    assert status == 400, "the right code is worth nothing once the pairing ended"
    assert (await guesser.call("GET", "/v1/devices"))[1]["devices"] == []


async def test_service_lookups_need_the_service_token(api: Stack, http, provisioner):
    family = await sign_up(http, api.api_url, "Tesla")
    device_id, _ = await pair(http, api, family, "Lab Pi")
    auth = {"Authorization": f"Bearer {api.service_token}"}
    room = f"room_{family.id}_{device_id}"
    # The public listener (the one behind Caddy) does not serve them, even to the service token.
    for method, path in (
        ("GET", f"/v1/service/rooms/{room}"),
        ("POST", f"/v1/service/runtimes/{family.id}"),
        ("GET", "/v1/service/livekit"),
    ):
        async with http.request(method, f"{api.api_url}{path}", headers=auth) as resp:
            assert resp.status == 404, (method, path)
            assert (await resp.json())["error"] == f"{path} is not an API endpoint"
    # And the service listener serves nothing else but its health.
    async with http.get(f"{api.service_url}/v1/me", headers=family.headers) as resp:
        assert resp.status == 404
    async with http.get(f"{api.service_url}/healthz") as resp:
        assert resp.status == 200
    for headers in ({}, family.headers, {"Authorization": "Bearer nope"}):
        async with http.get(f"{api.service_url}/v1/service/rooms/{room}", headers=headers) as resp:
            assert resp.status == 401
        async with http.post(f"{api.service_url}/v1/service/runtimes/{family.id}", headers=headers) as resp:
            assert resp.status == 401
        async with http.get(f"{api.service_url}/v1/service/livekit", headers=headers) as resp:
            assert resp.status == 401
    async with http.get(f"{api.service_url}/v1/service/rooms/{room}", headers=auth) as resp:
        assert resp.status == 200
        found = await resp.json()
    # With the family's gateway key, the bridge's speech is the family's, at the gateway.
    gateway_key = found.pop("gateway_key")
    assert found == {"user_id": family.id, "name": "Tesla", "room": room}
    assert family_of_llm_key(api.secret.encode(), gateway_key) == uuid.UUID(family.id)
    another = await sign_up(http, api.api_url, "Other")
    for bad in (
        "room_nope",
        f"room_{family.id}",  # a family's, of no device
        f"room_{family.id}_{uuid.uuid4()}",  # a device that is not the family's
        f"room_{another.id}_{device_id}",  # this device, under another family
        "lobby",
    ):
        async with http.get(f"{api.service_url}/v1/service/rooms/{bad}", headers=auth) as resp:
            assert resp.status == 404, bad
    assert (await family.call("DELETE", f"/v1/devices/{device_id}"))[0] == 204
    async with http.get(f"{api.service_url}/v1/service/rooms/{room}", headers=auth) as resp:
        assert resp.status == 404  # a revoked device's room is no one's
    async with http.post(f"{api.service_url}/v1/service/runtimes/{family.id}", headers=auth) as resp:
        assert resp.status == 200
        runtime = await resp.json()
    async with http.get(
        f"{runtime['url']}/v1/models", headers={"Authorization": f"Bearer {runtime['api_key']}"}
    ) as resp:
        assert resp.status == 200  # the agent answers with the key the bridge was given
    async with http.post(f"{api.service_url}/v1/service/runtimes/{uuid.uuid4()}", headers=auth) as resp:
        assert resp.status == 404
    await provisioner.stop(uuid.UUID(family.id))


@pytest.mark.usefixtures("fresh_settings")
async def test_the_voice_bridge_reads_the_admins_livekit_server(api: Stack, http):
    auth = {"Authorization": f"Bearer {api.service_token}"}
    async with http.get(f"{api.service_url}/v1/service/livekit", headers=auth) as resp:
        assert resp.status == 503 and "LiveKit" in (await resp.json())["error"]
    server = {"url": "wss://voice.example", "api_key": "APIkey", "api_secret": secrets.token_hex(32)}
    for key, value in server.items():
        await api.db.aio(api.db.set_setting, f"livekit.{key}", value)
    async with http.get(f"{api.service_url}/v1/service/livekit", headers=auth) as resp:
        assert resp.status == 200 and await resp.json() == server


@pytest.mark.usefixtures("fresh_settings")
async def test_whatsapp_numbers_are_linked_with_a_code_sent_to_them(api: Stack, http):
    alice, bob = await sign_up(http, api.api_url, "Ada"), await sign_up(http, api.api_url, "Byron")
    status, body = await alice.call("POST", "/v1/whatsapp/numbers", json={"number": "+447700900123"})
    assert status == 503 and "not set up" in body["error"]  # no Twilio yet, and nothing recorded
    assert (await alice.call("GET", "/v1/whatsapp/numbers"))[1]["numbers"] == []
    for key, value in api.start_twilio().items():
        await api.db.aio(api.db.set_setting, key, value)

    for bad in ("12345", "+0123456789", "call me", ""):
        status, body = await alice.call("POST", "/v1/whatsapp/numbers", json={"number": bad})
        assert status == 400 and body["error"], bad
    status, body = await alice.call("POST", "/v1/whatsapp/numbers", json={"number": "+44 7700 900123"})
    assert status == 201, body
    number = body["number"]
    assert number["number"] == "+447700900123" and number["verified"] is False
    sent = api.twilio_messages()[-1]
    assert sent["to"] == "whatsapp:+447700900123" and sent["from"] == "whatsapp:+14155550100"
    code = sent["body"].split("code is ")[1][:6]

    # Bob can neither verify nor remove Alice's number, nor see it.
    verify = f"/v1/whatsapp/numbers/{number['id']}/verify"
    assert (await bob.call("POST", verify, json={"code": code}))[0] == 404
    assert (await bob.call("DELETE", f"/v1/whatsapp/numbers/{number['id']}"))[0] == 404
    assert (await bob.call("GET", "/v1/whatsapp/numbers"))[1]["numbers"] == []

    wrong = "000000" if code != "000000" else "111111"
    status, body = await alice.call("POST", verify, json={"code": wrong})
    assert status == 400 and body["error"] == "wrong code"
    status, body = await alice.call("POST", verify, json={"code": code})
    assert status == 200 and body["number"]["verified"] is True

    # A verified number belongs to one family: Bob cannot claim it, not even with a code.
    status, body = await bob.call("POST", "/v1/whatsapp/numbers", json={"number": "+447700900123"})
    assert status == 400 and "another family" in body["error"]

    # Guessing is bounded: five wrong codes and the code is dead.
    status, body = await bob.call("POST", "/v1/whatsapp/numbers", json={"number": "+14155550199"})
    bobs = body["number"]["id"]
    right = api.twilio_messages()[-1]["body"].split("code is ")[1][:6]
    for _ in range(5):
        guess = "999999" if right != "999999" else "888888"
        await bob.call("POST", f"/v1/whatsapp/numbers/{bobs}/verify", json={"code": guess})
    status, body = await bob.call("POST", f"/v1/whatsapp/numbers/{bobs}/verify", json={"code": right})
    assert status == 400 and "too many" in body["error"]

    assert (await alice.call("DELETE", f"/v1/whatsapp/numbers/{number['id']}"))[0] == 204
    assert (await alice.call("GET", "/v1/whatsapp/numbers"))[1]["numbers"] == []


@pytest.mark.usefixtures("fresh_settings")
@pytest.mark.alone  # beside a second busy worker, the engine's stats lacked the runtime's memory
async def test_admin_settings_and_a_model_change_restarts_every_runtime(api: Stack, http, provisioner):
    admin = await admin_session(api, http)
    family = await sign_up(http, api.api_url, "Shannon")
    url = f"{api.api_url}/v1/admin/settings"
    async with http.put(url, json={"llm.model": "x"}, headers=family.headers) as resp:
        assert resp.status == 403  # families are not admins
    before = await api.db.aio(api.db.get_settings, "")
    for bad in ({"llm.base_url": "not a url", "llm.model": "changed"}, {"nope": "x"}, {"llm.model": 3}, []):
        async with http.put(url, json=bad, headers=admin) as resp:
            assert resp.status == 400 and (await resp.json())["error"], bad
    assert await api.db.aio(api.db.get_settings, "") == before  # nothing changed

    status, _ = await family.call("POST", "/v1/runtime/ensure")
    assert status == 200
    old = api.container(uuid.UUID(family.id))
    async with http.put(
        url, json={"llm.api_key": "sk-new", "twilio.account_sid": "AC1"}, headers=admin
    ) as resp:
        body = await resp.json()
        assert body["restarting"] is False  # read per request by the gateway: no restart
        assert body["settings"]["llm.api_key"] == {"set": True}
    assert api.container(uuid.UUID(family.id)).id == old.id

    async with http.put(url, json={"llm.model": "bigger-model"}, headers=admin) as resp:
        body = await resp.json()
        assert body["changed"] == ["llm.model"] and body["restarting"] is True
    async with http.post(f"{api.api_url}/v1/admin/restart-all", headers=admin) as resp:
        assert resp.status in (202, 409)  # the one started by the save may still run
    deadline = time.monotonic() + 180
    while True:
        async with http.get(f"{api.api_url}/v1/admin/restart-all", headers=admin) as resp:
            progress = (await resp.json())["progress"]
        if progress["state"] != "running":
            break
        assert time.monotonic() < deadline, progress
        await asyncio.sleep(0.5)
    assert progress["state"] == "done" and progress["done"] == progress["total"] >= 1, progress
    new = api.container(uuid.UUID(family.id))
    assert new.id != old.id  # recreated with the new model in its config
    assert new.labels["sudo.config-hash"] != old.labels["sudo.config-hash"]

    async with http.get(f"{api.api_url}/v1/admin/fleet", headers=admin) as resp:
        fleet = await resp.json()
    mine = next(f for f in fleet["families"] if f["user_id"] == family.id)
    assert mine["state"] == "running" and mine["memory_bytes"] > 10 * 2**20, mine
    assert fleet["units"] == [] and "D-Bus" in fleet["units_error"]  # no systemd on this host
    await provisioner.stop(uuid.UUID(family.id))
