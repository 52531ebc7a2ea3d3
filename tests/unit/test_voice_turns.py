"""Voice turns in the family's Home thread: the voice bridge reports each one to sudo-api's
service listener, every member of the family reads it (/v1 and /chat), no one else does, and it
is never delivered to the agent, which already answered it out loud. sudo-api runs in process,
both listeners on a real database; the bridge's reporter hooks a real AgentSession's events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_services import offline_services
from livekit.agents import AgentSession, ConversationItemAddedEvent, llm

from sudo_api.app import build_app, build_service_app
from sudo_api.context import Services
from sudo_core.families import room_for
from sudo_voice_bridge.hermes import STILL_THINKING
from sudo_voice_bridge.sudo_api import SudoApi
from sudo_voice_bridge.turns import TurnReporter

SERVICE_TOKEN = "service-token"


@dataclass
class Api:
    public: TestClient
    service: TestClient
    services: Services

    @property
    def service_url(self) -> str:
        return str(self.service.make_url(""))

    async def turn(self, body: object, token: str = SERVICE_TOKEN) -> tuple[int, dict]:
        """POST a voice turn to the service listener: (status, body)."""
        resp = await self.service.post(
            "/v1/service/voice/turns", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json()


@dataclass
class Home:
    """A family: its owner, its members' session tokens by role, and its paired device's room."""

    id: uuid.UUID
    owner: uuid.UUID
    tokens: dict[str, str]
    room: str


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with (
        offline_services(tmp_path, SERVICE_TOKEN) as services,  # voice turns wake no agent
        TestClient(TestServer(build_app(services))) as public,
        TestClient(TestServer(build_service_app(services))) as service,
    ):
        yield Api(public, service, services)


def home(svc: Services, name: str, members: tuple[str, ...] = ("owner", "adult", "child")) -> Home:
    """A family with a member of each role and a device paired through both codes."""
    family = svc.db.create_family(name)
    tokens, ids = {}, {}
    for role in members:
        login = {"username": f"{name}-{role}"} if role == "child" else {"email": f"{name}-{role}@example.org"}
        account = svc.accounts.create("not a real hash", f"{name} {role}", family.id, role, **login)
        tokens[role], ids[role] = svc.accounts.open_session(account.id), account.id
    started = svc.devices.start_pairing("Kitchen Pi")
    claim = svc.devices.claim_pairing(family.id, started["code"])
    said = svc.devices.pairing_status(started["device_token"])["confirm_code"]
    device = svc.devices.confirm_pairing(family.id, str(claim.pairing_id), said)
    return Home(family.id, ids["owner"], tokens, room_for(family.id, device.id))


async def history(api: Api, token: str, query: str = "") -> list[dict]:
    resp = await api.public.get(f"/v1/chat/messages{query}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["messages"]


async def test_a_voice_turn_is_in_the_home_thread_of_every_member_and_no_one_else(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, "smith")
    jones = await svc.db.aio(home, svc, "jones", ("owner",))
    store = svc.chat.store
    private = await svc.db.aio(store.add_user_message, smiths.id, smiths.owner, "owner's secret", "Owner")

    with svc.chat.hub.listen(smiths.id, smiths.owner) as stream:  # the owner's open page
        status, body = await api.turn(
            {"room": smiths.room, "heard": " what's the weather ", "answered": "Sunny all day."}
        )
    assert status == 201, body
    heard, answered = body["messages"]
    assert (heard["role"], heard["sender"], heard["text"], heard["status"]) == (
        "user",
        "Kitchen Pi",
        "what's the weather",
        "answered",
    )
    assert (answered["role"], answered["text"], answered["status"], answered["reply_to"]) == (
        "assistant",
        "Sunny all day.",
        "final",
        heard["id"],
    )
    assert heard["home"] and answered["home"] and heard["account_id"] is None
    # Shown live to every member's open pages at once.
    assert [stream.get_nowait()["message"]["id"] for _ in range(2)] == [heard["id"], answered["id"]]

    for member, token in smiths.tokens.items():
        shown = await history(api, token, "?thread=home")
        assert [(m["sender"], m["text"]) for m in shown] == [
            ("Kitchen Pi", "what's the weather"),
            ("assistant", "Sunny all day."),
        ], member
        mine = [m["text"] for m in await history(api, token)]  # `me`, the default
        assert mine == (["owner's secret"] if member == "owner" else []), member
        assert await history(api, token, "?thread=me") == await history(api, token)
        cookie = {"Cookie": f"sudo_session={token}"}
        page = await (await api.public.get("/chat?thread=home", headers=cookie)).text()
        assert "what&#39;s the weather" in page and "Kitchen Pi" in page and 'id="send"' not in page
        page = await (await api.public.get("/chat", headers=cookie)).text()
        assert "what&#39;s the weather" not in page and 'id="send"' in page
    # Another family reads none of it.
    assert await history(api, jones.tokens["owner"], "?thread=home") == []
    cookie = {"Cookie": f"sudo_session={jones.tokens['owner']}"}
    assert "weather" not in await (await api.public.get("/chat?thread=home", headers=cookie)).text()

    # Never delivered to the agent: the owner's own message is all there is to deliver.
    assert [m.id for m in await svc.db.aio(store.open_messages, smiths.id)] == [private.id]
    await svc.db.aio(store.set_status, private.id, "answered")
    assert await svc.db.aio(store.families_with_open_messages) == []
    assert await svc.db.aio(store.next_to_deliver, smiths.id) == (None, False)


async def test_voice_turns_need_the_service_token_and_a_whole_turn_of_a_paired_device(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, "smith", ("owner",))
    jones = await svc.db.aio(home, svc, "jones", ("owner",))
    good = {"room": smiths.room, "heard": "hello", "answered": "Hi!"}

    for token in ("", "wrong", smiths.tokens["owner"]):  # no service, a guess, a member
        assert (await api.turn(good, token))[0] == 401
    resp = await api.public.post("/v1/service/voice/turns", json=good, headers={"Authorization": "Bearer x"})
    assert resp.status == 404  # the public listener serves no /v1/service route
    for bad in (
        good | {"heard": ""},
        good | {"answered": "   "},
        good | {"heard": 42},
        {"room": smiths.room, "heard": "hello"},
        good | {"answered": "x" * 8001},
        good | {"room": "not-a-room"},
        ["not", "an", "object"],
    ):
        status, body = await api.turn(bad)
        assert status == 400 and body["error"], bad
    resp = await api.service.post(
        "/v1/service/voice/turns",
        data="{not json",
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"},
    )
    assert resp.status == 400
    # A room naming one family with another's device, or a device gone, is no one's.
    jones_device = jones.room.rpartition("_")[2]
    for room in (f"room_{smiths.id}_{jones_device}", room_for(smiths.id, uuid.uuid4())):
        status, body = await api.turn(good | {"room": room})
        assert status == 404 and "no paired device" in body["error"], room
    assert await svc.db.aio(svc.db.query, "SELECT * FROM messages") == []
    bad = await api.public.get(
        "/v1/chat/messages?thread=family", headers={"Authorization": f"Bearer {smiths.tokens['owner']}"}
    )
    assert bad.status == 400


def said(session: AgentSession, role: str, text: str) -> None:
    """What the session emits as a message joins the conversation."""
    item = llm.ChatMessage(role=role, content=[text])  # type: ignore[arg-type]
    session.emit("conversation_item_added", ConversationItemAddedEvent(item=item))


async def test_the_bridge_reports_each_turn_once_its_answer_was_spoken(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, "smith", ("owner",))
    session = AgentSession()
    async with SudoApi(api.service_url, SERVICE_TOKEN) as client:
        turns = TurnReporter(client, smiths.room)
        turns.attach(session)
        said(session, "assistant", "Hello there.")  # nothing heard: no turn
        said(session, "user", "turn on the lights")
        said(session, "assistant", STILL_THINKING + "Done, the lights are on.")
        said(session, "user", "and the")  # cut off: the agent answered the words after it too
        said(session, "user", "kitchen radio")
        said(session, "assistant", "The radio is on.")
        said(session, "user", "thanks")  # the session ended before its answer
        await turns.aclose()
    shown = await history(api, smiths.tokens["owner"], "?thread=home")
    assert [(m["role"], m["text"]) for m in shown] == [
        ("user", "turn on the lights"),
        ("assistant", "Done, the lights are on."),
        ("user", "and the\nkitchen radio"),
        ("assistant", "The radio is on."),
    ]


async def test_a_turn_sudo_api_cannot_take_is_logged_and_the_session_goes_on(
    api: Api, caplog: pytest.LogCaptureFixture
):
    session = AgentSession()
    async with SudoApi("http://127.0.0.1:9", SERVICE_TOKEN) as client:  # nothing listens there
        turns = TurnReporter(client, room_for(uuid.uuid4(), uuid.uuid4()))
        turns.attach(session)
        with caplog.at_level(logging.WARNING, "sudo_voice_bridge.turns"):
            said(session, "user", "hello")
            said(session, "assistant", "Hi!")
            await turns.aclose()
    assert "a voice turn was not kept" in caplog.text
