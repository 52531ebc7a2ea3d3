"""WhatsApp end to end: signed webhooks into sudo-api, the twilio_whatsapp plugin in a real Hermes
container, the LLM stand-in answering, replies through the gateway to the Twilio stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from control_plane import Family, join, png, sign_up
from stack import Stack
from test_api_access import admin_session
from twilio_stub import sign

from sudo_core.families import api_key_for, llm_key_for

SENDER = "+14155550100"


@pytest.fixture
async def twilio(api: Stack, fresh_settings) -> dict[str, str]:
    """The Twilio stand-in, and sudo-api configured for it (status callbacks straight to it)."""
    settings = api.start_twilio() | {"twilio.public_url": api.api_url}
    for key, value in settings.items():
        await api.db.aio(api.db.set_setting, key, value)
    async with aiohttp.ClientSession() as http:
        await http.delete(f"{settings['twilio.api_base']}/_stub/faults")
    return settings


async def linked_family(api: Stack, http: aiohttp.ClientSession, name: str, number: str) -> Family:
    """A family whose owner has a verified number."""
    family = await sign_up(http, api.api_url, name)
    await link(api, family, number)
    return family


async def link(api: Stack, member: Family, number: str) -> None:
    """A verified number of this member's (linking by code is tested in test_api_access)."""
    now = time.time()
    await api.db.aio(
        api.db.execute,
        "INSERT INTO whatsapp_numbers (id, family_id, account_id, number, created_at, verified_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (uuid.uuid4().hex, member.id, member.member_id, number, now, now),
    )


def message(number: str, body: str, media: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    form = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": "AC" + "1" * 32,
        "From": f"whatsapp:{number}",
        "To": f"whatsapp:{SENDER}",
        "Body": body,
        "ProfileName": "Grace",
        "NumMedia": str(len(media)),
    }
    for i, (url, kind) in enumerate(media):
        form |= {f"MediaUrl{i}": url, f"MediaContentType{i}": kind}
    return form


async def webhook(
    http: aiohttp.ClientSession, api: Stack, twilio: dict, form: dict, token: str | None = None
) -> tuple[int, float]:
    """POST a webhook signed as Twilio signs it; (status, seconds to the answer)."""
    url = f"{api.api_url}/v1/whatsapp/inbound"
    signature = sign(url, form, token or twilio["twilio.auth_token"])
    started = time.monotonic()
    async with http.post(url, data=form, headers={"X-Twilio-Signature": signature}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


def sent_to(api: Stack, number: str) -> list[dict[str, Any]]:
    return [m for m in api.twilio_messages() if m["to"] == f"whatsapp:{number}"]


def asked(api: Stack, text: str) -> int:
    """How many of the agent's LLM requests carried this text as the family's latest words
    (a turn may make more than one: Hermes also titles a new session)."""
    return sum(text in r["last_user"] for r in api.llm_requests())


async def until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """The predicate's first true result (it may be a coroutine function)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what}: not within {within} s")


async def outbound(api: Stack, number: str) -> list[dict[str, Any]]:
    rows = await api.db.aio(
        api.db.query, "SELECT * FROM whatsapp_outbound WHERE number = ? ORDER BY created_at", (number,)
    )
    return [dict(r) for r in rows]


async def test_a_message_reaches_the_familys_agent_and_the_reply_reaches_whatsapp(api: Stack, http, twilio):
    number = "+447700900201"
    family = await linked_family(api, http, "Hopper", number)
    form = message(number, "hello from whatsapp")
    status, seconds = await webhook(http, api, twilio, form)
    assert status == 200 and seconds < 1.0, seconds

    replies = await until(lambda: sent_to(api, number), 180, "the reply on WhatsApp")
    assert replies[0]["from"] == f"whatsapp:{SENDER}"
    assert replies[0]["body"].startswith("stub says: hello from whatsapp")

    # Twilio's status callbacks, signed, are recorded against the message.
    async def delivered() -> bool:
        return any(r["status"] == "delivered" for r in await outbound(api, number))

    await until(delivered, 30, "the delivered status")

    # Twilio retries the webhook: nothing is asked or sent twice.
    before = asked(api, "hello from whatsapp")
    for _ in range(2):
        assert (await webhook(http, api, twilio, form))[0] == 200
    await asyncio.sleep(3)
    assert len(sent_to(api, number)) == 1
    assert asked(api, "hello from whatsapp") == before

    # No Twilio credential inside the family's container: not in its environment or config.
    container = api.container(uuid.UUID(family.id))
    env = "\n".join(container.attrs["Config"]["Env"])
    config = container.exec_run(["cat", "/opt/data/config.yaml"]).output.decode()
    assert "twilio_whatsapp" in config
    assert twilio["twilio.auth_token"] not in env + config
    assert twilio["twilio.account_sid"] not in env + config


async def test_bad_signatures_and_unknown_numbers_reach_no_agent(api: Stack, http, twilio):
    number = "+447700900202"
    await linked_family(api, http, "Lovelace", number)
    forged = message(number, "forged words")
    assert (await webhook(http, api, twilio, forged, token="not the auth token"))[0] == 403
    async with http.post(f"{api.api_url}/v1/whatsapp/inbound", data=forged) as resp:
        assert resp.status == 403  # no signature at all
    stranger = "+15005550009"
    for n in range(3):
        assert (await webhook(http, api, twilio, message(stranger, f"who are you {n}")))[0] == 200
    notices = await until(lambda: sent_to(api, stranger), 30, "the stranger's notice")
    await asyncio.sleep(2)
    assert len(sent_to(api, stranger)) == 1  # once, however often it writes
    assert "Integrations page" in notices[0]["body"]
    rows = await api.db.aio(
        api.db.query,
        "SELECT 1 FROM whatsapp_inbox WHERE sid = ? OR number = ?",
        (forged["MessageSid"], stranger),
    )
    assert rows == []
    assert asked(api, "forged words") == 0 and asked(api, "who are you") == 0
    assert sent_to(api, number) == []


async def test_a_restart_between_acknowledgement_and_delivery_loses_nothing(api: Stack, http, twilio):
    number = "+447700900203"
    family = await linked_family(api, http, "Franklin", number)
    api.stop("provisioner")  # the runtime cannot be woken: the message waits in the inbox
    try:
        form = message(number, "kept through a crash")
        status, seconds = await webhook(http, api, twilio, form)
        assert status == 200 and seconds < 1.0
        api.stop("api", 9)  # killed after answering Twilio, before any delivery
    finally:
        api.start_provisioner()
    api.start_api()
    await until(lambda: sent_to(api, number), 180, "the reply after the restart")
    await asyncio.sleep(3)
    assert [m["body"][:31] for m in sent_to(api, number)] == ["stub says: kept through a crash"]
    assert asked(api, "kept through a crash") == 1

    # The container dies mid-answer: the plugin hands the message to the next agent process.
    doomed = message(number, "doomed [slow:8]")
    assert (await webhook(http, api, twilio, doomed))[0] == 200
    await until(lambda: asked(api, "doomed [slow:8]"), 60, "the agent asking the LLM")
    api.container(uuid.UUID(family.id)).kill()
    status, body = await family.call("POST", "/v1/runtime/ensure")
    assert status == 200, body
    await until(lambda: len(sent_to(api, number)) == 2, 120, "the answer from the new container")
    await asyncio.sleep(3)
    assert [m["body"][:26] for m in sent_to(api, number)][1:] == ["stub says: doomed [slow:8]"]


async def test_a_reply_sent_before_its_agent_died_is_not_sent_again(api: Stack, http, twilio, provisioner):
    """The agent killed after its reply left through the gateway and before it marked the
    message done: the next agent process answers it again, under the same part ids (the
    message's id and the part's place in the turn), which the gateway has already sent."""
    number = "+447700900209"
    family = await linked_family(api, http, "Noether", number)
    family_id = uuid.UUID(family.id)
    assert (await webhook(http, api, twilio, message(number, "warm up")))[0] == 200  # opens the window
    await until(lambda: sent_to(api, number), 180, "the first reply")
    await provisioner.stop(family_id)
    # What the killed agent left: the message in its journal, not done...
    sid = "SM" + uuid.uuid4().hex
    entry = {"type": "in", "id": sid, "from": number, "name": "Emmy", "text": "replayed words", "media": []}
    path = "/opt/data/twilio_whatsapp/journal.jsonl"
    api.on_volume(family_id, 'printf "%s\\n" "$0" >> "$1"', json.dumps(entry), path, mode="rw")
    # ...and its reply, already taken by the gateway, as the plugin sends it.
    gateway = f"http://{api.settings.runtime.host_address}:{api.settings.gateway.port}"
    key = llm_key_for(api.secret.encode(), family_id)
    reply = {"id": f"{sid}.0", "to": number, "body": "stub says: replayed words"}
    async with http.post(
        f"{gateway}/v1/whatsapp/messages", json=reply, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 201, await resp.text()
    status, body = await family.call("POST", "/v1/runtime/ensure")
    assert status == 200, body

    def journal() -> str:
        return api.container(family_id).exec_run(["cat", path]).output.decode()

    await until(lambda: f'"type": "done", "id": "{sid}"' in journal(), 180, "the message answered again")
    await asyncio.sleep(3)  # for a second send to show
    assert asked(api, "replayed words") >= 1
    assert [m["body"] for m in sent_to(api, number) if "replayed words" in m["body"]] == [reply["body"]]


async def test_long_replies_split_and_twilio_errors_are_retried(api: Stack, http, twilio):
    number = "+447700900204"
    await linked_family(api, http, "Turing", number)
    async with http.post(f"{twilio['twilio.api_base']}/_stub/faults", json={"status": 429, "count": 2}):
        pass
    words = " ".join(f"word{n}" for n in range(300))  # about 2,600 characters back
    assert (await webhook(http, api, twilio, message(number, words)))[0] == 200
    parts = await until(lambda: len(sent_to(api, number)) >= 2 and sent_to(api, number), 180, "the parts")
    assert all(len(p["body"]) <= 1600 for p in parts)
    joined = " ".join(p["body"] for p in parts)
    assert "word0" in joined and "word299" in joined
    attempts = [a for a in attempts_of(twilio, api) if a["to"] == f"whatsapp:{number}"]
    assert [a["status"] for a in attempts[:2]] == [429, 429] and len(attempts) == len(parts) + 2

    # A permanent refusal is not retried, and the admin sees it.
    async with http.post(
        f"{twilio['twilio.api_base']}/_stub/faults",
        json={
            "to": f"whatsapp:{number}",
            "status": 400,
            "code": 63003,
            "message": "Channel could not find To",
        },
    ):
        pass
    assert (await webhook(http, api, twilio, message(number, "refused reply")))[0] == 200
    failed = await until(lambda: with_status(api, number, "failed"), 120, "the refusal recorded")
    assert "63003" in failed[0]["error"]
    await asyncio.sleep(3)
    refused = [a for a in attempts_of(twilio, api) if a["to"] == f"whatsapp:{number}" and a["status"] == 400]
    assert len(refused) == 1
    admin = await admin_session(api, http)
    async with http.get(f"{api.api_url}/v1/admin/fleet", headers=admin) as resp:
        problems = (await resp.json())["whatsapp_problems"]
    assert any(p["family"] == "Turing" and "63003" in p["error"] for p in problems), problems


def attempts_of(twilio: dict, api: Stack) -> list[dict]:
    """Every message POST the Twilio stand-in answered, refused or not."""
    path = api.twilio_log.with_name(api.twilio_log.name + ".attempts")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def with_status(api: Stack, number: str, status: str) -> list[dict[str, Any]]:
    return [r for r in await outbound(api, number) if r["status"] == status]


@pytest.mark.alone  # its timed window was seen missed beside a second busy worker
async def test_messages_outside_the_window_are_held_or_sent_as_the_template(api: Stack, http, twilio):
    number = "+447700900205"
    family = await linked_family(api, http, "Meitner", number)
    assert (await webhook(http, api, twilio, message(number, "hi")))[0] == 200
    await until(lambda: sent_to(api, number), 180, "the first reply")
    runtime = await until(lambda: api.container(uuid.UUID(family.id)), 10, "the runtime")
    runtime.reload()
    address = next(iter(runtime.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    key = api_key_for(api.secret.encode(), uuid.UUID(family.id))

    async def proactive(text: str) -> None:
        """What a cron job's delivery does: through the plugin's /deliver, to the gateway."""
        async with http.post(
            f"http://{address}:8644/deliver",
            json={"chat_id": number, "text": text},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            assert resp.status == 200, await resp.text()

    # The number last wrote 25 hours ago, and no template is set: held, and reported.
    await api.db.aio(
        api.db.execute,
        "UPDATE whatsapp_inbox SET received_at = ? WHERE number = ?",
        (time.time() - 90000, number),
    )
    await proactive("water the plants")
    held = await until(lambda: with_status(api, number, "held"), 30, "the held message")
    assert held[0]["body"] == "water the plants"
    assert all("water the plants" not in m["body"] for m in sent_to(api, number))

    # The number writes again: the window opens and what was held goes out.
    assert (await webhook(http, api, twilio, message(number, "back again")))[0] == 200
    await until(
        lambda: any(m["body"] == "water the plants" for m in sent_to(api, number)),
        60,
        "the held message sent",
    )

    # With a template set, a message outside the window goes as the template.
    await api.db.aio(api.db.set_setting, "twilio.template_sid", "HX" + "a" * 32)
    await api.db.aio(
        api.db.execute,
        "UPDATE whatsapp_inbox SET received_at = ? WHERE number = ?",
        (time.time() - 90000, number),
    )
    await proactive("dentist at nine")
    templated = await until(
        lambda: [m for m in sent_to(api, number) if m.get("content_sid")], 30, "the template message"
    )
    assert templated[0]["content_sid"] == "HX" + "a" * 32
    assert templated[0]["content_variables"] == {"1": "dentist at nine"}


async def test_a_photo_reaches_the_agent_and_the_answer_is_words_alone(api: Stack, http, twilio):
    number = "+447700900208"
    await linked_family(api, http, "Daguerre", number)
    photo = png()
    async with http.post(
        f"{twilio['twilio.api_base']}/_stub/media", data=photo, headers={"Content-Type": "image/png"}
    ) as resp:
        photo_url = (await resp.json())["url"]
    form = message(number, "what is in this photo?", media=((photo_url, "image/png"),))
    assert (await webhook(http, api, twilio, form))[0] == 200

    request = await until(
        lambda: next((r for r in api.llm_requests() if "what is in this photo?" in r["last_user"]), None),
        180,
        "the photo reaching the agent",
    )
    assert request["images"] == [
        {"type": "image/png", "bytes": len(photo), "sha256": hashlib.sha256(photo).hexdigest()}
    ]
    # One answer, in words: the photo the family sent, which the agent may name by its path on
    # the volume, is not sent back as an attachment WhatsApp's adapter cannot deliver.
    await until(lambda: sent_to(api, number), 60, "the reply on WhatsApp")
    await asyncio.sleep(3)  # a notice of an undelivered attachment would follow at once
    replies = sent_to(api, number)
    assert len(replies) == 1 and replies[0]["body"].startswith("stub says: "), replies
    assert "Couldn't deliver" not in replies[0]["body"], replies


async def test_voice_notes_are_transcribed_and_unsupported_media_answered(api: Stack, http, twilio):
    number = "+447700900206"
    await linked_family(api, http, "Bell", number)
    base = twilio["twilio.api_base"]
    voice = bytes(range(256)) * 40  # the stand-in transcribes any bytes: it names their hash
    async with http.post(f"{base}/_stub/media", data=voice, headers={"Content-Type": "audio/ogg"}) as resp:
        voice_url = (await resp.json())["url"]
    async with http.post(
        f"{base}/_stub/media", data=b"\0" * 1000, headers={"Content-Type": "video/mp4"}
    ) as resp:
        video_url = (await resp.json())["url"]
    form = message(number, "", media=((voice_url, "audio/ogg"), (video_url, "video/mp4")))
    assert (await webhook(http, api, twilio, form))[0] == 200

    transcript = f"voice note {hashlib.sha256(voice).hexdigest()[:12]} {len(voice)} bytes"
    await until(lambda: asked(api, transcript), 180, "the transcript reaching the agent")
    stt = api.llm_requests("/v1/audio/transcriptions")
    assert stt and stt[-1]["authorization"] == f"Bearer {api.llm_key}"  # the host's key, not the family's
    notices = await until(
        lambda: [m for m in sent_to(api, number) if "not mp4 files" in m["body"]], 30, "the notice"
    )
    assert len(notices) == 1
    huge = b"\xff" * (16 * 1024 * 1024 + 1)
    async with http.post(f"{base}/_stub/media", data=huge, headers={"Content-Type": "image/jpeg"}) as resp:
        huge_url = (await resp.json())["url"]
    assert (await webhook(http, api, twilio, message(number, "", media=((huge_url, "image/jpeg"),))))[
        0
    ] == 200
    await until(lambda: [m for m in sent_to(api, number) if "too large" in m["body"]], 60, "the size notice")
    await until(lambda: any(transcript in m["body"] for m in sent_to(api, number)), 60, "the reply")


async def test_messages_a_stop_cut_off_are_answered_once_in_order(api: Stack, http, twilio, provisioner):
    """The agent stopped (SIGTERM, as a recreate or the engine's restart does) while it answers
    one message and holds the next: the next agent process answers both, in order, before a
    message that reaches it the moment it takes messages; each once, and nothing of Hermes's
    stop reaches the family.

    The LLM stand-in holds the first answer ([slow:6]), so the stop cuts that turn. Stopping,
    Hermes answers any message handed to it with "not accepting new work": the held message was
    lost so. And its session keeps the cut turn's words, unanswered, and merges them into the
    next turn it runs: a newer message handed to the next process first was answered together
    with the cut one, whose own replay then answered it again (issue 17's duplicate)."""
    number = "+447700900210"
    family = await linked_family(api, http, "Meitner", number)
    family_id = uuid.UUID(family.id)
    assert (await webhook(http, api, twilio, message(number, "warm up")))[0] == 200  # opens the window
    await until(lambda: sent_to(api, number), 180, "the first reply")
    cut, held = message(number, "cut off [slow:6]"), message(number, "held behind it")
    assert (await webhook(http, api, twilio, cut))[0] == 200
    await until(lambda: asked(api, "cut off"), 60, "the agent asking the LLM")
    assert (await webhook(http, api, twilio, held))[0] == 200
    await until(lambda: inbox_status(api, held) == "delivered", 30, "the held message in the agent's hands")
    stopped = api.container(family_id)
    await asyncio.to_thread(stopped.stop, timeout=10)

    newer = {"id": "SM" + uuid.uuid4().hex, "from": number, "name": "Lise", "text": "newer words"}
    ensured = asyncio.create_task(provisioner.ensure(family_id))
    await at_its_first_moment(api, family_id, stopped.id, newer)
    await ensured
    said = ("cut off", "held behind it", "newer words")
    with contextlib.suppress(TimeoutError):  # what came is checked below
        await until(lambda: all(any(w in m["body"] for m in sent_to(api, number)) for w in said), 90, "")
    await asyncio.sleep(3)  # for a second answer to show
    bodies = [m["body"] for m in sent_to(api, number)][1:]
    assert all(b.startswith("stub says: ") for b in bodies), bodies  # no notice of Hermes's stop
    assert [sum(w in b for b in bodies) for w in said] == [1, 1, 1], bodies
    answered_at = [next(n for n, b in enumerate(bodies) if w in b) for w in said]
    assert answered_at == sorted(answered_at), bodies  # in the order the family wrote


def inbox_status(api: Stack, form: dict[str, str]) -> str | None:
    row = api.db.query_one("SELECT status FROM whatsapp_inbox WHERE sid = ?", (form["MessageSid"],))
    return row["status"] if row else None


async def at_its_first_moment(api: Stack, family: uuid.UUID, stopped: str, body: dict) -> None:
    """Hand a message straight to the next agent process's twilio_whatsapp listener, again and
    again until it takes it (as sudo-api does, without its half-second pause): it arrives the
    moment that process takes messages."""
    headers = {"Authorization": f"Bearer {api.api_key(family)}"}
    url = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            url = url or await asyncio.to_thread(whatsapp_listener, api, family, stopped)
            if url is not None:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):  # not listening yet
                    async with session.post(url, json=body, headers=headers) as resp:
                        if resp.status == 202:
                            return
                        assert resp.status == 503, await resp.text()  # Hermes is starting
            await asyncio.sleep(0.005)
    raise TimeoutError("the next agent process never took the message")


def whatsapp_listener(api: Stack, family: uuid.UUID, stopped: str) -> str | None:
    """The /inbound URL of the family's container once it is another than `stopped`."""
    container = api.container(family)
    if container is None or container.id == stopped:
        return None
    address = container.attrs["NetworkSettings"]["Networks"].get(api.network, {}).get("IPAddress")
    return f"http://{address}:{api.settings.runtime.whatsapp_port}/inbound" if address else None


async def test_a_forgotten_password_is_reset_by_a_code_sent_on_whatsapp(api: Stack, http, twilio):
    """The code goes through the Twilio stand-in to the member's verified number only; a wrong
    code costs a guess, the right one sets the password once; whether a number is linked is
    never told."""
    number = "+447700900777"
    family = await linked_family(api, http, "Reset", number)
    url = f"{api.api_url}/v1/auth/reset/whatsapp"
    for who in (number, "+447700900778"):  # linked, and not: the same answer
        async with http.post(url, json={"number": who}) as resp:
            assert resp.status == 202 and "if this number is linked" in (await resp.json())["sent"]
    codes = [m["body"] for m in await until(lambda: sent_to(api, number), 10, "the code sent")]
    assert sent_to(api, "+447700900778") == [], "nothing goes to a number no member linked"
    code = next(word.rstrip(".") for word in codes[-1].split() if word.rstrip(".").isdigit())

    new = "a brand new password"
    async with http.post(url, json={"number": number, "code": "000000", "password": new}) as resp:
        assert resp.status == 400 and "wrong or expired code" in (await resp.json())["error"]
    async with http.post(url, json={"number": number, "code": code, "password": "short"}) as resp:
        assert resp.status == 400 and "at least" in (await resp.json())["error"]  # the code stays
    async with http.post(url, json={"number": number, "code": code, "password": new}) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(url, json={"number": number, "code": code, "password": new + "!"}) as resp:
        assert resp.status == 400, "a code works once"
    status, _ = await family.call("GET", "/v1/me")
    assert status == 401, "a reset password ends the sessions the old one opened"
    login = {"login": family.account["email"], "password": new}
    async with http.post(f"{api.api_url}/v1/auth/login", json=login) as resp:
        assert resp.status == 200
    # Guessing is bounded per number: five wrong codes (the used one was the first), then a wait.
    for _ in range(4):
        async with http.post(url, json={"number": number, "code": "111111", "password": new}) as resp:
            assert resp.status == 400
    async with http.post(url, json={"number": number, "code": "111111", "password": new}) as resp:
        assert resp.status == 429 and "Retry-After" in resp.headers


async def test_a_removed_members_number_reaches_no_agent_and_nothing_held_goes_to_it(
    api: Stack, http, twilio
):
    owner = await sign_up(http, api.api_url, "Noether")
    adult = await join(owner, "Emmy")
    number = "+447700900889"
    await link(api, adult, number)
    assert (await webhook(http, api, twilio, message(number, "hello from emmy")))[0] == 200
    await until(lambda: sent_to(api, number), 180, "the reply to Emmy")
    assert any("Emmy [adult]" in (r.get("speaker") or "") for r in api.llm_requests())
    # Something waits for Emmy's number outside WhatsApp's window (as a cron job's reminder would).
    await api.db.aio(
        api.db.execute,
        "INSERT INTO whatsapp_outbound (id, family_id, number, body, status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'held', ?, ?)",
        (uuid.uuid4().hex, owner.id, number, "for emmy later", time.time(), time.time()),
    )

    status, _ = await owner.call("DELETE", f"/v1/family/members/{adult.member_id}")
    assert status == 204
    assert [m for m in await outbound(api, number) if m["status"] == "held"] == []
    replies = len(sent_to(api, number))
    assert (await webhook(http, api, twilio, message(number, "am i still here")))[0] == 200
    notices = await until(lambda: sent_to(api, number)[replies:], 30, "the unlinked notice")
    assert "Integrations page" in notices[0]["body"]
    await asyncio.sleep(2)
    assert asked(api, "am i still here") == 0, "a removed member's number reaches no agent"
    assert all(m["body"] != "for emmy later" for m in sent_to(api, number))
