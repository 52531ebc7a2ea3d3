"""A family is its members: each with their own login and thread with the family's one agent, in a
real Hermes container, which is told who is speaking; the owner's removal of a member is at once."""

from __future__ import annotations

import asyncio
import json
import uuid

from control_plane import PASSWORD, Family, add_child, admin_session, join, pair, sign_up
from stack import Stack
from test_api_chat import events, wait_status


async def invite_adult(owner: Family, name: str) -> Family:
    """An adult who joined by the owner's invitation, which then cannot be used again."""
    adult = await join(owner, name)
    _, body = await owner.call("GET", "/v1/family")
    assert [m["name"] for m in body["members"]][-1] == name and body["invitations"] == [], body
    return adult


def speakers_seen(api: Stack) -> list[str]:
    """Who the agent was told is speaking, turn by turn, as the LLM stand-in received it."""
    return [r["speaker"] for r in api.llm_requests() if r.get("speaker")]


async def test_members_talk_at_once_each_in_their_own_thread(api: Stack, http):
    owner = await sign_up(http, api.api_url, "Ada")
    adult = await invite_adult(owner, "Bea")
    child = await add_child(owner, "Cy")
    assert {adult.id, child.id} == {owner.id}, "all three are members of one family"
    assert (adult.account["role"], child.account["role"]) == ("adult", "child")

    members = (owner, adult, child)
    sent = await asyncio.gather(*(m.send(f"hello from {m.account['name']}") for m in members))
    for member, message_id in zip(members, sent, strict=True):
        await wait_status(member, message_id, "answered")

    # Each thread holds its own member's words and their answers, and nobody else's.
    for member in members:
        status, body = await member.call("GET", "/v1/chat/messages?limit=500")
        assert status == 200
        texts = [m["text"] for m in body["messages"]]
        mine = f"hello from {member.account['name']}"
        assert texts[0] == mine and any(mine in t for t in texts[1:]), texts
        others = [n for n in ("Ada", "Bea", "Cy") if n != member.account["name"]]
        assert not any(f"hello from {n}" in t for t in texts for n in others), texts
        assert {m["account_id"] for m in body["messages"]} == {member.member_id}
    # The family's agent's use of the provider, as the provider counted it, for every member to see.
    for member in members:
        _, body = await member.call("GET", "/v1/family")
        [today] = body["usage"]["days"]
        assert today["answers"] >= 3 and today["tokens_in"] > 0 and today["tokens_out"] > 0, today
    # A message of another thread cannot be retried (or even found) by its id.
    status, _ = await adult.call("POST", f"/v1/chat/messages/{sent[0]}/retry")
    assert status == 404

    # The agent was told who spoke, and what Sudo vouches their role is.
    seen = speakers_seen(api)
    for label in ('"Ada [adult]"', '"Bea [adult]"', '"Cy [child]"'):
        assert any(label in line for line in seen), (label, seen)

    # A child runs nothing: no invitations, no children, no pairing, no settings of others.
    for method, path, body in (
        ("POST", "/v1/family/invitations", None),
        ("POST", "/v1/family/children", {"username": "dd", "password": PASSWORD, "name": "D"}),
        ("POST", "/v1/devices/pairing/complete", {"code": "ABCDEF"}),
        ("DELETE", f"/v1/family/members/{adult.member_id}", None),
        ("POST", f"/v1/family/members/{adult.member_id}/reset", None),
    ):
        status, answer = await child.call(method, path, json=body)
        assert status == 403 and answer["error"], (path, status, answer)
    # An adult invites, but only the owner removes or changes roles.
    status, answer = await adult.call("DELETE", f"/v1/family/members/{child.member_id}")
    assert status == 403 and "owner" in answer["error"]


async def test_a_removed_member_is_cut_off_at_once(api: Stack, http):
    owner = await sign_up(http, api.api_url, "Dora")
    adult = await invite_adult(owner, "Eli")
    first = await adult.send("remember me")
    await wait_status(adult, first, "answered")

    stream_events: list[dict] = []

    async def follow() -> None:
        async for event in events(adult):
            stream_events.append(event)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    status, _ = await owner.call("DELETE", f"/v1/family/members/{adult.member_id}")
    assert status == 204
    await asyncio.wait_for(follower, 10)  # the open stream ends: the server closed it
    assert all(e["type"] != "message" for e in stream_events)

    status, body = await adult.call("GET", "/v1/chat/messages")
    assert status == 401, body
    status, body = await owner.call("GET", "/v1/family")
    assert [m["name"] for m in body["members"]] == ["Dora"]
    rows = await api.db.aio(
        api.db.query_one, "SELECT count(*) FROM messages WHERE account_id = ?", (adult.member_id,)
    )
    assert rows[0] == 0, "the removed member's thread went with them"
    # The owner's own thread is untouched.
    mine = await owner.send("still here")
    await wait_status(owner, mine, "answered")


async def test_errors_a_member_can_provoke_are_clear(api: Stack, http):
    owner = await sign_up(http, api.api_url, "Flo")
    cases = [
        ("POST", "/v1/family/children", {"username": "A!", "password": PASSWORD, "name": "x"}, 400),
        ("POST", "/v1/family/children", {"username": "kid", "password": "short", "name": "x"}, 400),
        ("PATCH", f"/v1/family/members/{owner.member_id}", {"role": "child"}, 400),
        ("PATCH", f"/v1/family/members/{uuid.uuid4()}", {"role": "adult"}, 404),
        ("DELETE", "/v1/family/members/not-a-uuid", None, 404),
        ("DELETE", f"/v1/family/members/{owner.member_id}", None, 400),
        ("DELETE", "/v1/family/invitations/nope", None, 404),
        ("POST", "/v1/me/leave", None, 400),
        ("POST", "/v1/me/password", {"current": "wrong password!", "password": PASSWORD + "2"}, 400),
        ("DELETE", "/v1/me/sessions/0123456789abcdef", None, 404),
        ("PATCH", "/v1/me", {"email": "not an email"}, 400),
    ]
    for method, path, body, want in cases:
        status, answer = await owner.call(method, path, json=body)
        assert status == want and answer.get("error"), (method, path, status, answer)
    # An invitation works once, and not once revoked.
    _, made = await owner.call("POST", "/v1/family/invitations")
    joining = {
        "token": made["invitation"]["token"],
        "email": "gil@example.org",
        "password": PASSWORD,
        "name": "Gil",
    }
    for want in (201, 404):
        async with http.post(f"{api.api_url}/v1/auth/join", json=joining) as resp:
            assert resp.status == want, await resp.text()
    _, made = await owner.call("POST", "/v1/family/invitations")
    status, _ = await owner.call("DELETE", f"/v1/family/invitations/{made['invitation']['id']}")
    assert status == 204
    joining |= {"token": made["invitation"]["token"], "email": "hap@example.org"}
    async with http.post(f"{api.api_url}/v1/auth/join", json=joining) as resp:
        assert resp.status == 404 and "revoked" in (await resp.json())["error"]
    for body in ({"token": "nope", "password": PASSWORD}, {"token": "x"}):
        async with http.post(f"{api.api_url}/v1/auth/reset", json=body) as resp:
            assert resp.status in (400, 404) and (await resp.json())["error"]
    async with http.post(f"{api.api_url}/v1/auth/join", data=json.dumps({"token": 1})) as resp:
        assert resp.status == 400


def rows_of(api: Stack, family: str, members: list[str]) -> dict[str, int]:
    """Every row of the database that belongs to the family or one of its members, by table."""
    found = {}
    for (table,) in api.db.query("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = {c["name"] for c in api.db.query(f"PRAGMA table_info({table})")}
        clauses, params = [], []
        if "family_id" in columns:
            clauses.append("family_id = ?")
            params.append(family)
        if "account_id" in columns:
            clauses.append(f"account_id IN ({','.join('?' * len(members))})")
            params += members
        if table == "families":
            clauses, params = ["id = ?"], [family]
        if table == "accounts":
            clauses.append(f"id IN ({','.join('?' * len(members))})")
            params += members
        if clauses:
            count = api.db.query_one(
                f"SELECT count(*) FROM {table} WHERE {' OR '.join(clauses)}", tuple(params)
            )
            if count[0]:
                found[table] = count[0]
    return found


async def test_a_deleted_family_leaves_nothing_and_the_others_are_untouched(api: Stack, http):
    owner = await sign_up(http, api.api_url, "Gus")
    adult = await invite_adult(owner, "Hal")
    child = await add_child(owner, "Ivy")
    other = await sign_up(http, api.api_url, "Other")
    _, device_token = await pair(http, api, owner, "Kitchen Pi")
    for member in (owner, child, other):
        await wait_status(member, await member.send(f"hi from {member.account['name']}"), "answered")
    members = [owner.member_id, adult.member_id, child.member_id]
    assert (await api.db.aio(rows_of, api, owner.id, members))["messages"] >= 4
    assert api.container(uuid.UUID(owner.id)) is not None

    status, body = await owner.call("DELETE", "/v1/family", json={"name": "not the name"})
    assert status == 400 and "Gus" in body["error"], body
    status, body = await adult.call("DELETE", "/v1/family", json={"name": "Gus"})
    assert status == 403, "only the owner deletes the family"
    status, body = await owner.call("DELETE", "/v1/family", json={"name": " gus "})
    assert status == 204, body

    assert api.container(uuid.UUID(owner.id)) is None
    volume = f"hermes-user-{uuid.UUID(owner.id).hex}-data"
    assert not api.docker.volumes.list(filters={"name": volume}), "its data volume is gone"
    assert await api.db.aio(rows_of, api, owner.id, members) == {}, "no row of it remains"
    for member in (owner, adult, child):
        status, _ = await member.call("GET", "/v1/me")
        assert status == 401, "every session of it ended"
    async with http.post(
        f"{api.api_url}/v1/devices/heartbeat", headers={"Authorization": f"Bearer {device_token}"}
    ) as resp:
        assert resp.status == 401, "its device's token is revoked"

    # The other family is untouched: still running, its history whole, still answered.
    assert api.container(uuid.UUID(other.id)).status == "running"
    status, body = await other.call("GET", "/v1/chat/messages")
    assert len(body["messages"]) >= 2
    await wait_status(other, await other.send("still there?"), "answered")


async def test_a_disabled_family_is_told_so_and_its_agent_stays_stopped(api: Stack, http):
    family = await sign_up(http, api.api_url, "Jo")
    await wait_status(family, await family.send("before"), "answered")
    admin = await admin_session(api, http)

    async with http.post(f"{api.api_url}/v1/admin/families/{family.id}/disable", headers=admin) as resp:
        assert resp.status == 200, await resp.text()
    assert api.container(uuid.UUID(family.id)) is None, "its agent stopped"
    for method, path in (("GET", "/v1/chat/messages"), ("POST", "/v1/runtime/ensure"), ("GET", "/v1/family")):
        status, body = await family.call(method, path)
        assert status == 403 and body["error"] == "this family is disabled: ask the host's admin", body
    async with http.get(f"{api.api_url}/chat", headers=family.headers) as resp:
        assert resp.status == 403 and "disabled" in await resp.text()
    async with http.get(f"{api.api_url}/v1/admin/fleet", headers=admin) as resp:
        listed = next(f for f in (await resp.json())["families"] if f["user_id"] == family.id)
        assert listed["disabled"] and listed["members"] == 1

    async with http.post(f"{api.api_url}/v1/admin/families/{family.id}/enable", headers=admin) as resp:
        assert resp.status == 200
    await wait_status(family, await family.send("after"), "answered")


async def test_a_reset_link_works_once_and_then_expires(api: Stack, http):
    owner = await sign_up(http, api.api_url, "Ida")
    adult = await invite_adult(owner, "Jon")
    reset = f"{api.api_url}/v1/auth/reset"

    status, made = await owner.call("POST", f"/v1/family/members/{adult.member_id}/reset")
    assert status == 201 and made["url"].endswith(f"/reset/{made['token']}")
    async with http.get(made["url"].replace(made["url"].split("/reset/")[0], api.api_url)) as page:
        assert page.status == 200 and "A new password for Jon" in await page.text()
    for want in (200, 404):
        async with http.post(reset, json={"token": made["token"], "password": "jon's new password"}) as resp:
            assert resp.status == want, await resp.text()
    assert (await adult.call("GET", "/v1/me"))[0] == 401, "the reset ended Jon's sessions"

    # A link not used within the hour is worth nothing (its hour is made to pass in the database).
    status, made = await owner.call("POST", f"/v1/family/members/{adult.member_id}/reset")
    await api.db.aio(
        api.db.execute, "UPDATE password_resets SET expires_at = ? WHERE used_at IS NULL", (1.0,)
    )
    async with http.post(reset, json={"token": made["token"], "password": "another password"}) as resp:
        assert resp.status == 404 and "expired" in (await resp.json())["error"]
    async with http.post(
        f"{api.api_url}/v1/auth/login",
        json={"login": adult.account["email"], "password": "jon's new password"},
    ) as resp:
        assert resp.status == 200
