"""What the agent says first, out loud at home: the rules of its announcements, and the bridge's
side of them.

sudo-api runs in process on a real database, both listeners up; the agent's message comes as
the sudo_chat plugin's outbox hands it over (an event marked `speak`, read by the chat watcher);
the bridge asks through its own client, and a real AgentSession (espeak-ng speaking, a captured
speaker) says what it is given, heard back by pocketsphinx.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_services import offline_services
from livekit.agents import Agent, AgentSession
from voice_audio import CapturedOutput, RecordingInput, heard, wait_until

from sudo_api.announcements import ANNOUNCE_WITHIN_SEC
from sudo_api.app import build_app, build_service_app
from sudo_api.context import Services
from sudo_core.config import VoiceSettings
from sudo_core.families import room_for
from sudo_voice_bridge import speech
from sudo_voice_bridge.announcements import Announcer
from sudo_voice_bridge.session import load_vad
from sudo_voice_bridge.sudo_api import Announcement, SudoApi, SudoApiError

SERVICE_TOKEN = "service-token"


@dataclass
class Api:
    public: TestClient
    service: TestClient
    services: Services
    client: SudoApi
    """The voice bridge's client, on the service listener."""


@dataclass
class Home:
    """A family (its owner and the owner's session token) and its paired devices' rooms, by name."""

    id: uuid.UUID
    owner: uuid.UUID
    token: str
    rooms: dict[str, str]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with (
        offline_services(tmp_path, SERVICE_TOKEN) as services,
        TestClient(TestServer(build_app(services))) as public,
        TestClient(TestServer(build_service_app(services))) as service,
        SudoApi(str(service.make_url("")), SERVICE_TOKEN) as client,
    ):
        yield Api(public, service, services, client)


def home(svc: Services, devices: tuple[str, ...] = ("Kitchen Pi", "Bedroom Pi")) -> Home:
    """A family with its owner and devices paired through both codes, none of them online yet."""
    family = svc.db.create_family("Smith")
    owner = svc.accounts.create(
        "not a real hash", "Ada", family.id, "owner", email=f"{family.id}@example.org"
    )
    rooms = {}
    for name in devices:
        started = svc.devices.start_pairing(name)
        claim = svc.devices.claim_pairing(family.id, started["code"])
        said = svc.devices.pairing_status(started["device_token"])["confirm_code"]
        device = svc.devices.confirm_pairing(family.id, str(claim.pairing_id), said)
        rooms[name] = room_for(family.id, device.id)
    return Home(family.id, owner.id, svc.accounts.open_session(owner.id), rooms)


async def online(svc: Services, room: str, seen_ago: float = 1.0) -> None:
    """The room's device beat `seen_ago` seconds ago (as flushed to the database)."""
    device = room.rpartition("_")[2]
    await svc.db.aio(
        svc.db.execute, "UPDATE devices SET last_seen_at = ? WHERE id = ?", (time.time() - seen_ago, device)
    )


seqs = iter(range(1, 1_000_000))


async def agent_says(svc: Services, family: uuid.UUID, text: str, at: float | None = None) -> str:
    """The agent's words to its sudo_voice platform, as sudo-api reads them from the family's
    sudo_chat outbox (the watcher's own handling of a stream event); the message's id."""
    message_id = uuid.uuid4().hex
    event = {"seq": next(seqs), "type": "message", "id": message_id, "reply_to": None, "chat": "home"}
    await svc.chat._on_event(family, event | {"text": text, "at": at or time.time(), "speak": True})
    return message_id


async def home_thread(api: Api, token: str) -> list[dict]:
    resp = await api.public.get("/v1/chat/messages?thread=home", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["messages"]


async def test_each_online_device_says_it_once_and_the_home_thread_shows_it(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, ("Kitchen Pi", "Bedroom Pi", "Attic Pi"))
    kitchen, bedroom, attic = smiths.rooms.values()
    await online(svc, kitchen)
    await online(svc, bedroom, seen_ago=60)  # two beats missed: still online
    await online(svc, attic, seen_ago=3 * svc.settings.api.heartbeat_interval_sec + 1)  # gone

    with svc.chat.hub.listen(smiths.id, smiths.owner) as page:  # the owner's open page
        said = await agent_says(svc, smiths.id, "Time to leave for school.")
        shown = page.get_nowait()["message"]
    assert (shown["id"], shown["text"], shown["status"]) == (said, "Time to leave for school.", "to_speak")
    assert shown["home"] and shown["account_id"] is None and shown["role"] == "assistant"
    assert await svc.db.aio(svc.chat.store.open_messages, smiths.id) == []  # nothing to deliver

    # Each online device's room has it to say; the offline one's has not.
    for room in (kitchen, bedroom):
        assert await api.client.announcements(room, 0) == [Announcement(said, "Time to leave for school.")]
    assert await api.client.announcements(attic, 0) == []

    # Asked again before it was said (a bridge that restarted mid-sentence): handed out again.
    assert [a.id for a in await api.client.announcements(kitchen, 0)] == [said]
    with svc.chat.hub.listen(smiths.id, smiths.owner) as page:
        await api.client.announcement_spoken(kitchen, said)
        assert page.get_nowait()["message"]["status"] == "spoken"
    assert await api.client.announcements(kitchen, 0) == []  # said there: never again
    with pytest.raises(SudoApiError) as refused:
        await api.client.announcement_spoken(kitchen, said)
    assert refused.value.status == 404
    assert [a.id for a in await api.client.announcements(bedroom, 0)] == [said]  # still owed there
    await api.client.announcement_spoken(bedroom, said)
    assert [(m["text"], m["status"]) for m in await home_thread(api, smiths.token)] == [
        ("Time to leave for school.", "spoken")
    ]

    # Read again (sudo-api reconnected behind its cursor): stored once, said once.
    event = {"seq": 1, "type": "message", "id": said, "chat": "home", "text": "Time to leave for school."}
    assert await svc.db.aio(svc.chat.store.apply, smiths.id, event | {"speak": True}, [uuid.uuid4()]) == []
    assert await api.client.announcements(kitchen, 0) == []


async def test_with_no_device_online_or_too_late_it_is_a_note_in_the_home_thread(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc)
    kitchen = smiths.rooms["Kitchen Pi"]
    nobody_home = await agent_says(svc, smiths.id, "Time to leave for school.")

    await online(svc, kitchen)
    # Written while sudo-api was down, read past its time: a reminder said late is wrong.
    late = await agent_says(svc, smiths.id, "The bus is here.", at=time.time() - ANNOUNCE_WITHIN_SEC - 1)
    assert await api.client.announcements(kitchen, 0) == []
    shown = await home_thread(api, smiths.token)
    assert [(m["id"], m["status"]) for m in shown] == [(nobody_home, "not_spoken"), (late, "not_spoken")]
    with pytest.raises(SudoApiError) as refused:
        await api.client.announcement_spoken(kitchen, nobody_home)
    assert refused.value.status == 404


async def test_what_no_device_said_in_time_is_given_up_as_a_note(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc)
    kitchen, bedroom = smiths.rooms.values()
    await online(svc, kitchen)
    await online(svc, bedroom)
    said = await agent_says(svc, smiths.id, "Dinner is ready.")
    store = svc.chat.announcements.store

    assert await svc.db.aio(store.expire, time.time()) == []  # in time: still owed to both rooms
    # The bedroom device is revoked: its room owes nothing; the kitchen's still does.
    bedroom_device = uuid.UUID(bedroom.rpartition("_")[2])
    assert await svc.devices.revoke(smiths.id, bedroom_device)
    assert [a.id for a in await api.client.announcements(kitchen, 0)] == [said]
    # No bridge says it (down, or the room never joined): past its time, it is given up.
    later = time.time() + ANNOUNCE_WITHIN_SEC + 1
    assert await svc.db.aio(store.pending, smiths.id, uuid.UUID(kitchen.rpartition("_")[2]), later) == []
    assert await svc.db.aio(store.expire, later) == [(smiths.id, said)]
    assert [m["status"] for m in await home_thread(api, smiths.token)] == ["not_spoken"]
    assert await api.client.announcements(kitchen, 0) == []

    # A message whose every device was revoked before any said it is given up at the next sweep.
    second = await agent_says(svc, smiths.id, "Bath time.")
    assert await svc.devices.revoke(smiths.id, uuid.UUID(kitchen.rpartition("_")[2]))
    assert await svc.db.aio(store.expire, time.time()) == [(smiths.id, second)]


async def test_a_rooms_long_poll_answers_as_soon_as_the_agent_speaks(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, ("Kitchen Pi",))
    kitchen = smiths.rooms["Kitchen Pi"]
    await online(svc, kitchen)

    started = time.monotonic()
    assert await api.client.announcements(kitchen, 0.5) == []  # nothing came: empty once the time is up
    assert 0.5 <= time.monotonic() - started < 2

    polling = asyncio.create_task(api.client.announcements(kitchen, 30))
    await asyncio.sleep(0.3)
    assert not polling.done()
    said = await agent_says(svc, smiths.id, "The washing is done.")
    started = time.monotonic()
    assert [a.id for a in await asyncio.wait_for(polling, 5)] == [said]
    assert time.monotonic() - started < 1


async def test_the_rooms_announcements_need_the_service_token_and_a_paired_device(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, ("Kitchen Pi",))
    other = await svc.db.aio(home, svc, ("Other Pi",))
    kitchen = smiths.rooms["Kitchen Pi"]
    path = f"/v1/service/rooms/{kitchen}/announcements"
    for token in ("", "wrong", smiths.token):
        resp = await api.service.get(path, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, token
        resp = await api.service.post(f"{path}/x/spoken", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, token
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    assert (await api.public.get(path, headers=auth)).status == 404  # never on the public listener
    for wait in ("-1", "61", "soon", "nan"):
        resp = await api.service.get(f"{path}?wait={wait}", headers=auth)
        assert resp.status == 400 and "wait" in (await resp.json())["error"], wait
    other_device = other.rooms["Other Pi"].rpartition("_")[2]
    for room in (f"room_{smiths.id}_{other_device}", room_for(smiths.id, uuid.uuid4()), "lobby"):
        resp = await api.service.get(f"/v1/service/rooms/{room}/announcements", headers=auth)
        assert resp.status == 404, room
        resp = await api.service.post(f"/v1/service/rooms/{room}/announcements/x/spoken", headers=auth)
        assert resp.status == 404, room


async def started_session() -> tuple[AgentSession, CapturedOutput]:
    """A room's session as far as speaking goes: espeak-ng into a captured speaker, a quiet mic."""
    session = AgentSession(tts=speech.EspeakTTS("en-us"), vad=load_vad(VoiceSettings()))
    speaker = CapturedOutput()
    session.input.audio, session.output.audio = RecordingInput(), speaker
    await session.start(Agent(instructions="unused: the session only says what it is given"))
    return session, speaker


async def test_a_room_session_says_what_it_is_given_and_acknowledges_it(api: Api):
    svc = api.services
    smiths = await svc.db.aio(home, svc, ("Kitchen Pi",))
    kitchen = smiths.rooms["Kitchen Pi"]
    await online(svc, kitchen)
    session, speaker = await started_session()
    announcer = Announcer(api.client, kitchen)
    announcer.attach(session)
    try:
        said = await agent_says(svc, smiths.id, "The weather will be sunny tomorrow.")
        await wait_until(lambda: speaker.replies and speaker.replies[-1].played_sec, 20, "the announcement")
        deadline = time.monotonic() + 5
        while (shown := await home_thread(api, smiths.token))[0]["status"] != "spoken":
            assert time.monotonic() < deadline, f"never acknowledged: {shown}"
            await asyncio.sleep(0.05)
    finally:
        await announcer.aclose()
        await session.aclose()
    assert [m["id"] for m in shown] == [said]
    assert await heard(speaker) == "the weather will be sunny tomorrow"
    assert not speaker.replies[0].interrupted
    assert await api.client.announcements(kitchen, 0) == []  # acknowledged: a new session says nothing


async def test_what_a_closing_session_was_saying_stays_owed_to_the_next(
    api: Api, caplog: pytest.LogCaptureFixture
):
    svc = api.services
    smiths = await svc.db.aio(home, svc, ("Kitchen Pi",))
    kitchen = smiths.rooms["Kitchen Pi"]
    await online(svc, kitchen)
    session, speaker = await started_session()
    announcer = Announcer(api.client, kitchen)
    announcer.attach(session)
    long = "Remember that the school bus leaves early today, so everyone must be ready at seven sharp."
    said = await agent_says(svc, smiths.id, long)
    await asyncio.wait_for(speaker.reply_started.wait(), 20)
    with caplog.at_level(logging.INFO, "sudo_voice_bridge.announcements"):
        await session.aclose()  # the room closed mid-sentence (the device left)
        await wait_until(lambda: "announcements stay owed" in caplog.text, 5, "the announcer to stop")
    await announcer.aclose()
    assert speaker.replies[0].interrupted
    assert [a.id for a in await api.client.announcements(kitchen, 0)] == [said]
    assert [m["status"] for m in await home_thread(api, smiths.token)] == ["to_speak"]
