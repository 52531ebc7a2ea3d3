"""The authorization matrix: every route the app serves, as every role, against an explicit table.

Roles: anonymous; family A's owner, an adult and a child of A, and a member A's owner removed;
a member of family C, which the admin disabled; family B's owner; a paired device of A; the admin
(a family-less account) and the voice bridge's service token. Requests name A's own things (its
owner's messages, its devices, numbers, room, family id, a spare child) wherever a route takes
one, so every "404" of family B below is B being refused A's resource, and every 404 of A's
adult or child is a member refused what is another member's. The table is written out here, not
derived from the code under test, and the routes it covers must be exactly the routers of the
two apps (the public one, and the loopback service listener's, where the /v1/service rows are
asked: the public listener answers them 404) and the OpenAPI document, so a new endpoint cannot
go untested.

A request that would change state for an allowed caller is, where possible, one the route then
refuses for its content (a 400 past the authorization check), so the matrix has few side effects;
the destructive rows (revoking a device, unlinking a number, removing a member) run A's owner
last, after every other role tried the same resource while it existed (A's adult, a parent too,
goes just before: it takes the resource, and the owner then finds it gone). Leaving the family
is the last row: the adult leaves.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import aiohttp
import pytest
from control_plane import PASSWORD, add_child
from reliability_support import ROLES, Roles
from stack import Stack

from sudo_api.app import build_app, build_service_app
from sudo_api.history import ChatStore
from sudo_api.numbers import Numbers

Expected = dict[str, int | tuple[int, ...]]


def expect(
    anonymous, owner_a, adult_a, child_a, removed_a, disabled_c, b, device_a, admin, service
) -> Expected:
    """A row's statuses, in the order of the columns below."""
    statuses = (anonymous, owner_a, adult_a, child_a, removed_a, disabled_c, b, device_a, admin, service)
    return dict(zip(ROLES, statuses, strict=True))


BAD_SIGNUP = {"email": "not-an-email", "password": "x", "name": "", "family_name": ""}
WRONG_LOGIN = {"email": "nobody-{role}@example.org", "password": "wrong password!"}
"""{role}: one account per role, so the per-account login limit never decides a row."""
TWILIO_FORM = {"MessageSid": "SM" + "0" * 32, "From": "whatsapp:+447700900111", "Body": "hi"}
JOIN = {"token": "no-such-token", "email": "joiner-{role}@example.org", "password": PASSWORD, "name": "J"}
BAD_CHILD = {"username": "No Spaces!", "password": PASSWORD, "name": "Kid"}
FORGED_PUSH = {"endpoint": "http://169.254.169.254/latest/meta-data", "keys": {"p256dh": "x", "auth": "y"}}
"""A push subscription whose endpoint is no push service's (a cloud's metadata address)."""
DISABLED = 403
"""What a member of the disabled family gets from every family route: "this family is disabled"."""

# (method, route as the router names it, request, expected status by role)
# The request's path parameters name A's things: {spare_device} is a second device of A,
# {message} a failed message of A's owner, {photo} a message of theirs with a photo,
# {number} and {number2} two of the owner's (unverified)
# numbers, {spare_child} a child of A, {child} A's child role, {nobody} an id that is no one's.
# "listener": "service" asks sudo-api's loopback service listener instead of the public one.
# fmt: off
MATRIX: list[tuple[str, str, dict[str, Any], Expected]] = [
    # columns: anon, A's owner, adult, child, removed from A, disabled C, B, device of A, admin, service
    ("POST", "/v1/auth/signup", {"json": BAD_SIGNUP},
     expect(400, 400, 400, 400, 400, 400, 400, 400, 400, 400)),
    ("POST", "/v1/auth/login", {"json": WRONG_LOGIN},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 401)),
    ("POST", "/v1/auth/logout", {"fresh_session": True},
     expect(401, 204, 204, 204, 401, 204, 204, 401, 204, 401)),
    ("POST", "/v1/auth/join", {"json": JOIN}, expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("POST", "/v1/auth/reset", {"json": {"token": "no-such-token", "password": PASSWORD}},
     expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("POST", "/v1/auth/reset/whatsapp", {"json": {"number": "12345"}},
     expect(400, 400, 400, 400, 400, 400, 400, 400, 400, 400)),
    ("GET", "/v1/me", {}, expect(401, 200, 200, 200, 401, 200, 200, 401, 200, 401)),
    ("PATCH", "/v1/me", {"json": {"email": "not an email"}},
     expect(401, 400, 400, 400, 401, 400, 400, 401, 400, 401)),
    ("POST", "/v1/me/password", {"json": {"current": "wrong password!", "password": PASSWORD}},
     expect(401, 400, 400, 400, 401, 400, 400, 401, 400, 401)),
    ("GET", "/v1/me/sessions", {}, expect(401, 200, 200, 200, 401, 200, 200, 401, 200, 401)),
    ("DELETE", "/v1/me/sessions", {}, expect(401, 200, 200, 200, 401, 200, 200, 401, 200, 401)),
    ("DELETE", "/v1/me/sessions/{session_id}", {"path": {"session_id": "no_session"}},
     expect(401, 404, 404, 404, 401, 404, 404, 401, 404, 401)),
    ("GET", "/v1/family", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("DELETE", "/v1/family", {"json": {"name": "not the family's name"}},
     expect(401, 400, 403, 403, 401, DISABLED, 400, 401, 403, 401)),
    ("GET", "/v1/family/archive", {"stream": True},  # a gzip file: its body is not text
     expect(401, 200, 403, 403, 401, DISABLED, 200, 401, 403, 401)),
    ("POST", "/v1/family/invitations", {}, expect(401, 201, 201, 403, 401, DISABLED, 201, 401, 403, 401)),
    ("DELETE", "/v1/family/invitations/{invitation_id}", {"path": {"invitation_id": "nobody"}},
     expect(401, 404, 404, 403, 401, DISABLED, 404, 401, 403, 401)),
    ("POST", "/v1/family/children", {"json": BAD_CHILD},
     expect(401, 400, 400, 403, 401, DISABLED, 400, 401, 403, 401)),
    ("PATCH", "/v1/family/members/{member_id}",
     {"path": {"member_id": "spare_child"}, "json": {"role": "king"}},
     expect(401, 400, 403, 403, 401, DISABLED, 404, 401, 403, 401)),
    ("POST", "/v1/family/members/{member_id}/owner", {"path": {"member_id": "spare_child"}},
     expect(401, 400, 403, 403, 401, DISABLED, 404, 401, 403, 401)),  # a child cannot own
    ("POST", "/v1/family/members/{member_id}/reset", {"path": {"member_id": "spare_child"}},
     expect(401, 201, 201, 403, 401, DISABLED, 404, 401, 403, 401)),
    ("DELETE", "/v1/family/members/{member_id}", {"path": {"member_id": "spare_child"}},
     expect(401, 204, 403, 403, 401, DISABLED, 404, 401, 403, 401)),
    ("GET", "/v1/chat/messages", {"url": "/v1/chat/messages?around={m}", "path": {"m": "message"}},
     expect(401, 200, 404, 404, 401, DISABLED, 404, 401, 403, 401)),  # the history around A's message
    ("GET", "/v1/chat/search", {"url": "/v1/chat/search?q={word}", "path": {"word": "secret_word"}},
     expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),  # each their own thread: A's word
    ("POST", "/v1/chat/messages", {"json": {"text": ""}},
     expect(401, 400, 400, 400, 401, DISABLED, 400, 401, 403, 401)),
    ("POST", "/v1/chat/messages/{message_id}/retry", {"path": {"message_id": "message"}},
     expect(401, 202, 404, 404, 401, DISABLED, 404, 401, 403, 401)),
    ("GET", "/v1/chat/stream", {"stream": True},
     expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("GET", "/v1/chat/media/{message_id}", {"path": {"message_id": "photo"}, "stream": True},
     expect(401, 200, 404, 404, 401, DISABLED, 404, 401, 403, 401)),  # only its sender: A's owner
    ("POST", "/v1/admin/restart-all", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, (202, 409), 401)),
    ("GET", "/v1/push/key", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("POST", "/v1/push/subscriptions", {"json": FORGED_PUSH},  # at no push service: 400 for a member
     expect(401, 400, 400, 400, 401, DISABLED, 400, 401, 403, 401)),
    ("DELETE", "/v1/push/subscriptions", {"json": {"endpoint": FORGED_PUSH["endpoint"]}},
     expect(401, 404, 404, 404, 401, DISABLED, 404, 401, 403, 401)),
    ("GET", "/v1/push/preferences", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("PUT", "/v1/push/preferences", {"json": {"replies": "yes"}},
     expect(401, 400, 400, 400, 401, DISABLED, 400, 401, 403, 401)),
    ("POST", "/v1/runtime/ensure", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("POST", "/v1/devices/pairing", {"json": {"name": ""}},
     expect(400, 400, 400, 400, 400, 400, 400, 400, 400, 400)),
    ("GET", "/v1/devices/pairing", {}, expect(401, 401, 401, 401, 401, 401, 401, 200, 401, 401)),
    ("POST", "/v1/devices/pairing/complete", {"json": {"code": "ZZZZZZ"}},
     expect(401, 400, 400, 403, 401, DISABLED, 400, 401, 403, 401)),
    ("POST", "/v1/devices/pairing/confirm", {"json": {"pairing_id": "nobody_uuid", "code": "123456"}},
     expect(401, 400, 400, 403, 401, DISABLED, 400, 401, 403, 401)),
    ("GET", "/v1/devices", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("DELETE", "/v1/devices/{device_id}", {"path": {"device_id": "spare_device"}},
     expect(401, 404, 204, 403, 401, DISABLED, 404, 401, 403, 401)),
    ("POST", "/v1/devices/heartbeat", {}, expect(401, 401, 401, 401, 401, 401, 401, 200, 401, 401)),
    ("GET", "/v1/whatsapp/numbers", {}, expect(401, 200, 200, 200, 401, DISABLED, 200, 401, 403, 401)),
    ("POST", "/v1/whatsapp/numbers", {"json": {"number": "12345"}},
     expect(401, 400, 400, 400, 401, DISABLED, 400, 401, 403, 401)),
    ("POST", "/v1/whatsapp/numbers/{number_id}/verify",
     {"path": {"number_id": "number"}, "json": {"code": "000000"}},
     expect(401, 400, 404, 404, 401, DISABLED, 404, 401, 403, 401)),
    ("DELETE", "/v1/whatsapp/numbers/{number_id}", {"path": {"number_id": "number2"}},
     expect(401, 404, 204, 404, 401, DISABLED, 404, 401, 403, 401)),
    # Twilio's webhooks answer to Twilio's signature alone: no token of ours opens them.
    ("POST", "/v1/whatsapp/inbound", {"data": TWILIO_FORM},
     expect(403, 403, 403, 403, 403, 403, 403, 403, 403, 403)),
    ("POST", "/v1/whatsapp/status", {"data": {"MessageSid": "SM1", "MessageStatus": "read"}},
     expect(403, 403, 403, 403, 403, 403, 403, 403, 403, 403)),
    ("POST", "/v1/voice/token", {}, expect(401, 401, 401, 401, 401, 401, 401, 200, 401, 401)),
    ("GET", "/v1/service/rooms/{room}", {"path": {"room": "room"}, "listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 200)),
    ("POST", "/v1/service/runtimes/{user_id}", {"path": {"user_id": "family"}, "listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 200)),
    ("GET", "/v1/service/livekit", {"listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 200)),
    ("POST", "/v1/service/voice/turns",
     {"json": {"room": "", "heard": "", "answered": ""}, "listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 400)),
    ("GET", "/v1/service/rooms/{room}/announcements", {"path": {"room": "room"}, "listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 200)),
    ("POST", "/v1/service/rooms/{room}/announcements/{announcement_id}/spoken",
     {"path": {"room": "room", "announcement_id": "nobody"}, "listener": "service"},
     expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 404)),
    ("GET", "/v1/admin/settings", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 200, 401)),
    ("PUT", "/v1/admin/settings", {"json": {"no.such": "x"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 400, 401)),
    ("GET", "/v1/admin/restart-all", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 200, 401)),
    ("GET", "/v1/admin/fleet", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 200, 401)),
    ("GET", "/v1/admin/image", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 200, 401)),
    ("POST", "/v1/admin/image/upgrade", {"json": {"ref": ""}},  # no image named: nothing starts
     expect(401, 403, 403, 403, 401, 403, 403, 401, 400, 401)),
    ("POST", "/v1/admin/image/rollback", {},  # no upgrade ever ran here: refused by the provisioner
     expect(401, 403, 403, 403, 401, 403, 403, 401, (202, 409), 401)),
    ("DELETE", "/v1/admin/families/{user_id}", {"path": {"user_id": "nobody_uuid"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 404, 401)),
    ("POST", "/v1/admin/families/{user_id}/disable", {"path": {"user_id": "nobody_uuid"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 404, 401)),
    ("POST", "/v1/admin/families/{user_id}/enable", {"path": {"user_id": "nobody_uuid"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 404, 401)),
    ("POST", "/v1/admin/accounts/{account_id}/reset", {"path": {"account_id": "nobody_uuid"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 404, 401)),
    ("GET", "/v1/admin/invitations", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 200, 401)),
    ("POST", "/v1/admin/invitations", {}, expect(401, 403, 403, 403, 401, 403, 403, 401, 201, 401)),
    ("DELETE", "/v1/admin/invitations/{invitation_id}", {"path": {"invitation_id": "nobody"}},
     expect(401, 403, 403, 403, 401, 403, 403, 401, 404, 401)),
    ("GET", "/v1/openapi.json", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    # The pages. 303 is a redirect: to /login for no session (a device or service token is none),
    # to /admin for the family-less admin; POSTs without the form's CSRF token are refused.
    ("GET", "/", {}, expect(303, 303, 303, 303, 303, 303, 303, 303, 303, 303)),
    ("GET", "/healthz", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/static", {"url": "/static/sudo.css"}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/sw.js", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/manifest.webmanifest", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/signup", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("POST", "/signup", {"data": {"email": "x"}}, expect(400, 400, 400, 400, 400, 400, 400, 400, 400, 400)),
    ("GET", "/login", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("POST", "/login", {"data": WRONG_LOGIN}, expect(401, 401, 401, 401, 401, 401, 401, 401, 401, 401)),
    ("GET", "/setup", {}, expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),  # an admin exists
    ("POST", "/setup", {"data": {"email": "x"}}, expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("GET", "/chat", {"url": "/chat?around={m}", "path": {"m": "message"}},
     expect(303, 200, 404, 404, 303, DISABLED, 404, 303, 303, 303)),
    ("POST", "/chat", {"data": {"text": "forged"}}, expect(303, 403, 403, 403, 303, 403, 403, 303, 303, 303)),
    ("GET", "/chat/media/{message_id}", {"path": {"message_id": "photo"}, "stream": True},
     expect(303, 200, 404, 404, 303, DISABLED, 404, 303, 303, 303)),
    ("GET", "/integrations", {}, expect(303, 200, 200, 200, 303, DISABLED, 200, 303, 303, 303)),
    ("POST", "/integrations", {"data": {"action": "pair", "code": "ZZZZZZ"}},
     expect(303, 403, 403, 403, 303, 403, 403, 303, 303, 303)),
    ("GET", "/family", {}, expect(303, 200, 200, 200, 303, DISABLED, 200, 303, 303, 303)),
    ("POST", "/family", {"data": {"action": "invite"}},
     expect(303, 403, 403, 403, 303, 403, 403, 303, 303, 303)),
    ("GET", "/account", {}, expect(303, 200, 200, 200, 303, 200, 200, 303, 200, 303)),
    ("POST", "/account", {"data": {"action": "end-others"}},
     expect(303, 403, 403, 403, 303, 403, 403, 303, 403, 303)),
    # Reached without a login: a link's token is the credential, and a wrong one is no page.
    ("GET", "/join/{token}", {"path": {"token": "nobody"}},
     expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("POST", "/join/{token}", {"path": {"token": "nobody"}, "data": {"email": "x"}},
     expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("GET", "/reset/{token}", {"path": {"token": "nobody"}},
     expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("POST", "/reset/{token}", {"path": {"token": "nobody"}, "data": {"password": PASSWORD}},
     expect(404, 404, 404, 404, 404, 404, 404, 404, 404, 404)),
    ("GET", "/forgot", {}, expect(200, 200, 200, 200, 200, 200, 200, 200, 200, 200)),
    ("POST", "/forgot", {"data": {"action": "send", "number": "12345"}},
     expect(400, 400, 400, 400, 400, 400, 400, 400, 400, 400)),
    ("GET", "/admin", {}, expect(303, 403, 403, 403, 303, 403, 403, 303, 200, 303)),
    ("POST", "/admin", {"data": {"action": "invite"}},
     expect(303, 403, 403, 403, 303, 403, 403, 303, 403, 303)),
    ("GET", "/admin/settings", {}, expect(303, 403, 403, 403, 303, 403, 403, 303, 200, 303)),
    ("POST", "/admin/settings", {"data": {"llm.model": "forged"}},
     expect(303, 403, 403, 403, 303, 403, 403, 303, 403, 303)),
    ("POST", "/logout", {}, expect(303, 403, 403, 403, 303, 403, 403, 303, 403, 303)),
    # Last: the adult leaves (the owner cannot, a child may not; the disabled family is refused).
    ("POST", "/v1/me/leave", {}, expect(401, 400, 204, 403, 401, DISABLED, 400, 401, 403, 401)),
]
# fmt: on
ORDER = (
    "anonymous",
    "family_b",
    "device_a",
    "admin",
    "service",
    "removed_a",
    "disabled_c",
    "child_a",
    "adult_a",
    "family_a",
)
"""A's owner last: a destructive row meets every other role while A's resource still exists (A's
adult, a parent too, just before: it takes what a parent may take)."""


def served_routes() -> set[tuple[str, str]]:
    """What the two apps' routers serve, the public one's and the service listener's ("*" routes
    as GET and POST; HEAD is GET's own handler)."""
    served = set()
    for build in (build_app, build_service_app):
        app = build(None)  # type: ignore[arg-type] (listing routes needs no services)
        for route in app.router.routes():
            if route.method == "HEAD":
                continue
            methods = ("GET", "POST") if route.method == "*" else (route.method,)
            served |= {(m, route.resource.canonical) for m in methods}
    return served


def service_routes() -> set[tuple[str, str]]:
    """The /v1 routes of the service listener (which the public one does not serve)."""
    app = build_service_app(None)  # type: ignore[arg-type] (listing routes needs no services)
    routes = app.router.routes()
    return {
        (r.method, r.resource.canonical)
        for r in routes
        if r.method != "HEAD" and r.resource.canonical != "/healthz"
    }


def test_the_matrix_covers_every_route_and_the_openapi_document():
    from sudo_api.openapi import document

    table = {(method, route) for method, route, _, _ in MATRIX}
    assert len(table) == len(MATRIX), "a route appears twice in the matrix"
    assert table == served_routes()
    documented = {(m.upper(), p) for p, ops in document()["paths"].items() for m in ops}
    assert documented == {(m, r) for m, r in served_routes() if r.startswith("/v1/")}
    # The rows asked of the service listener are exactly the routes it alone serves.
    on_service = {
        (method, route) for method, route, request, _ in MATRIX if request.get("listener") == "service"
    }
    assert on_service == service_routes()


@pytest.fixture
async def things_of_a(api: Stack, http: aiohttp.ClientSession, roles: Roles) -> dict[str, str]:
    """A's things for the requests to name, and the text of A's message (which no one else may see)."""
    from control_plane import pair

    family = uuid.UUID(roles.a.id)
    store = ChatStore(api.db)
    secret_word = secrets.token_hex(6)
    secret_text = f"a's secret {secret_word}"
    member = uuid.UUID(roles.a.member_id)
    message = await api.db.aio(store.add_user_message, family, member, secret_text, "A")
    await api.db.aio(store.set_status, message.id, "failed", "test")
    form = aiohttp.FormData()
    form.add_field(
        "file", b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64), filename="a.png", content_type="image/png"
    )
    async with http.post(f"{api.api_url}/v1/chat/messages", data=form, headers=roles.a.headers) as resp:
        assert resp.status == 202, await resp.text()  # its file is on A's volume
        photo = (await resp.json())["message"]["id"]
    spare, _ = await pair(http, api, roles.a, "Spare Pi")
    numbers = Numbers(api.db)
    number, _ = await api.db.aio(numbers.start, family, member, "+447700900201")
    number2, _ = await api.db.aio(numbers.start, family, member, "+447700900202")
    for key, value in (("livekit.url", "wss://voice.example"), ("livekit.api_key", "APIk")):
        await api.db.aio(api.db.set_setting, key, value)
    await api.db.aio(api.db.set_setting, "livekit.api_secret", secrets.token_hex(32))
    return {
        "message": message.id,
        "photo": photo,
        "secret_text": secret_text,
        "secret_word": secret_word,
        "spare_device": spare,
        "number": number.id,
        "number2": number2.id,
        "room": f"room_{family}_{roles.device_id}",  # the room of A's paired device
        "family": str(family),
        "spare_child": (await add_child(roles.a, "Spare")).member_id,
        "no_session": "0123456789abcdef",
        "nobody": "no-such-id",
        "nobody_uuid": str(uuid.uuid4()),
    }


def _for(body: dict[str, str], role: str) -> dict[str, str]:
    return {k: v.replace("{role}", role) if isinstance(v, str) else v for k, v in body.items()}


async def fresh_token(http: aiohttp.ClientSession, api: Stack, login: str) -> dict[str, str]:
    body = {"login": login, "password": PASSWORD}
    async with http.post(f"{api.api_url}/v1/auth/login", json=body) as resp:
        assert resp.status == 200
        return {"Authorization": f"Bearer {(await resp.json())['token']}"}


@pytest.mark.usefixtures("fresh_settings")
async def test_every_route_as_every_role(api: Stack, http, roles: Roles, things_of_a, figures, provisioner):
    admin_email = (await api.db.aio(api.db.query_one, "SELECT email FROM accounts WHERE is_admin = 1"))[0]
    logins = {
        "family_a": roles.a.account["email"],
        "adult_a": roles.adult.account["email"],
        "child_a": roles.child.account["email"],  # a child logs in with their username
        "disabled_c": roles.disabled.account["email"],
        "family_b": roles.b.account["email"],
        "admin": admin_email,
    }
    # What only A's owner may be shown: their own thread. What no one outside family A may be
    # shown (the admin sees families, not their content): its devices, numbers, members.
    private_to_owner = [things_of_a["secret_text"]]
    private_to_a = [things_of_a[k] for k in ("spare_device", "number", "number2")]
    private_to_a += [roles.device_id, roles.a.account["email"]]
    wrong: list[str] = []
    for i, (method, route, request, expected) in enumerate(MATRIX):
        path = request.get("url", route)
        for name, thing in request.get("path", {}).items():
            path = path.replace("{" + name + "}", things_of_a[thing])
        base = api.service_url if request.get("listener") == "service" else api.api_url
        if base != api.api_url:  # not on the public listener, not even for the service token
            async with http.request(method, api.api_url + path, headers=roles.headers("service")) as resp:
                if resp.status != 404:
                    wrong.append(f"{method} {path} on the public listener: {resp.status}, expected 404")
        for role in ORDER:
            headers = roles.headers(role)
            if request.get("fresh_session") and role in logins:
                headers = await fresh_token(http, api, logins[role])
            # Each request from its own client address, so the rate limits never decide a row.
            headers = headers | {"X-Forwarded-For": f"192.0.2.{i}"}
            kwargs = {k: _for(request[k], role) for k in ("json", "data") if k in request}
            async with http.request(
                method, base + path, headers=headers, allow_redirects=False, **kwargs
            ) as resp:
                status = resp.status
                body = "" if request.get("stream") else await resp.text()
            figures.tried(status)
            allowed = expected[role] if isinstance(expected[role], tuple) else (expected[role],)
            if status not in allowed:
                wrong.append(f"{method} {path} as {role}: {status}, expected {expected[role]}: {body[:200]}")
            shown = [] if role in ("family_a", "device_a") else private_to_owner
            shown = shown + ([] if role in ("family_a", "adult_a", "child_a", "device_a") else private_to_a)
            if role == "service" and "/v1/service/rooms/" in path:  # the room it asked for, by name
                shown = [secret for secret in shown if secret != roles.device_id]
            leaked = [secret for secret in shown if secret in body]
            if leaked:
                wrong.append(f"{method} {path} as {role} showed A's {leaked}")
    figures.notes["routes"] = len(MATRIX)
    figures.notes["roles"] = len(ROLES)
    assert not wrong, "\n".join(wrong)

    # B's refusals changed nothing of A's: B's code guess cost A's number no attempt.
    row = await api.db.aio(
        api.db.query_one, "SELECT attempts FROM whatsapp_numbers WHERE id = ?", (things_of_a["number"],)
    )
    assert row["attempts"] == 1  # A's own wrong code only
    for family in (roles.a.id, roles.b.id):
        await provisioner.stop(uuid.UUID(family))
