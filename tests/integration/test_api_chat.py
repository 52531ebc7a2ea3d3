"""Chat through sudo-api: the sudo_chat plugin in a real Hermes container, replies streamed live,
history kept, and nothing a family says lost when sudo-api or the agent dies mid-reply."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
from control_plane import Family, run_cron_now, sign_up
from stack import Notifications, Stack

from sudo_core.families import runtime_name


async def events(family: Family) -> AsyncIterator[dict]:
    """The family's live chat events (server-sent events from /v1/chat/stream)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with family.http.get(
        f"{family.base}/v1/chat/stream", headers=family.headers, timeout=timeout
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


async def wait_status(family: Family, message_id: str, want: str, within: float = 120) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, body = await family.call("GET", "/v1/chat/messages?limit=500")
        assert status == 200, body
        mine = next(m for m in body["messages"] if m["id"] == message_id)
        if mine["status"] == want:
            return body
        await asyncio.sleep(0.25)
    raise TimeoutError(f"message {message_id} never became {want} in {within} s: {mine}")


async def test_a_message_is_answered_live_and_kept(api: Stack, http):
    family = await sign_up(http, api.api_url, "Hopper")
    seen: list[dict] = []

    async def follow() -> None:
        async for event in events(family):
            seen.append(event)
            if event["type"] == "message" and event["message"]["role"] == "assistant":
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the stream is open before the message goes
    status, body = await family.call("POST", "/v1/chat/messages", json={"text": "hello [drip:0.05]"})
    assert status == 202, body
    sent = body["message"]
    assert sent["status"] == "queued" and sent["role"] == "user" and sent["sender"] == "Hopper"
    await asyncio.wait_for(follower, 180)

    kinds = [e["type"] for e in seen]
    assert ("status", "waking") in [(e["type"], e.get("state")) for e in seen]  # a cold start says so
    drafts = [e["text"] for e in seen if e["type"] == "draft"]
    assert len(drafts) >= 2, kinds  # written word by word, seen growing
    assert all(b.startswith(a.rstrip()) for a, b in itertools.pairwise(drafts))
    reply = seen[-1]["message"]
    assert reply["text"].startswith("stub says: hello")
    # The agent's words also come as HTML made from their Markdown, as they grow and once kept;
    # the member's own words never do.
    drafts_html = [e["html"] for e in seen if e["type"] == "draft"]
    assert all(html.startswith("<p>stub") for html in drafts_html), drafts_html
    assert reply["html"].startswith("<p>stub says: hello") and sent["html"] is None
    assert reply["reply_to"] == sent["id"]

    history = await wait_status(family, sent["id"], "answered")
    texts = [(m["role"], m["text"][:17]) for m in history["messages"]]
    assert texts == [("user", "hello [drip:0.05]"), ("assistant", "stub says: hello ")]
    # The agent heard the family through the gateway with its own key, never the provider's.
    assert any(r["last_user"].startswith("hello") for r in api.llm_requests())


async def test_history_pages_and_bad_input_changes_nothing(api: Stack, http):
    family = await sign_up(http, api.api_url, "Noether")
    for bad in ({}, {"text": ""}, {"text": "   "}, {"text": 5}, {"text": "x" * 8001}):
        status, body = await family.call("POST", "/v1/chat/messages", json=bad)
        assert status == 400 and body["error"], bad
    async with http.post(f"{api.api_url}/v1/chat/messages", data=b"not json", headers=family.headers) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    for query in ("limit=0", "limit=abc", "before=x", "limit=501"):
        status, body = await family.call("GET", f"/v1/chat/messages?{query}")
        assert status == 400, query
    status, body = await family.call("GET", "/v1/chat/messages")
    assert status == 200 and body == {"messages": [], "more": False, "newer": False}
    status, body = await family.call("POST", "/v1/chat/messages/nope/retry")
    assert status == 404


async def test_a_message_survives_a_sudo_api_restart_mid_reply(api: Stack, http):
    family = await sign_up(http, api.api_url, "Lamarr")
    await wait_status(family, await family.send("warm up"), "answered", 180)

    slow_id = await family.send("slowly [slow:6]")
    await wait_status(family, slow_id, "delivered", 30)
    api.stop("api", 9)  # killed mid-reply: no goodbye, nothing flushed
    await asyncio.sleep(7)  # the agent finishes while no sudo-api is there to listen
    api.start_api()
    history = await wait_status(family, slow_id, "answered", 60)
    replies = [m for m in history["messages"] if m["reply_to"] == slow_id]
    assert [r["text"][:25] for r in replies] == ["stub says: slowly [slow:6"]


async def test_a_message_is_answered_after_the_agent_dies_mid_reply(api: Stack, http):
    family = await sign_up(http, api.api_url, "Franklin")
    await wait_status(family, await family.send("first"), "answered", 180)
    asked = len(api.llm_requests())

    doomed = await family.send("doomed [slow:8]")
    await wait_status(family, doomed, "delivered", 30)
    deadline = time.monotonic() + 30
    while not any(r["last_user"].startswith("doomed") for r in api.llm_requests()[asked:]):
        assert time.monotonic() < deadline, "the agent never asked the LLM"
        await asyncio.sleep(0.2)
    api.docker.containers.get(runtime_name(uuid.UUID(family.id))).kill()  # the agent dies thinking

    history = await wait_status(family, doomed, "answered", 180)
    replies = [m for m in history["messages"] if m["reply_to"] == doomed]
    assert len(replies) == 1 and replies[0]["text"].startswith("stub says: doomed")
    asked_doomed = [r for r in api.llm_requests()[asked:] if r["last_user"].startswith("doomed")]
    assert len(asked_doomed) >= 2  # asked again by the new agent process, answered once


async def test_a_reply_stored_before_its_agent_died_is_not_stored_again(api: Stack, http, provisioner):
    """The agent killed after its reply reached sudo-api and before it marked the turn done:
    the next agent process answers the message again, under the same reply id (the message's
    id and the reply's place in the turn), so the family still sees one answer."""
    family = await sign_up(http, api.api_url, "Noether")
    family_id = uuid.UUID(family.id)
    await wait_status(family, await family.send("warm up"), "answered", 180)
    await provisioner.stop(family_id)
    # What the killed agent left: the message handed over, its reply stored, no turn done.
    message_id, now = uuid.uuid4().hex, time.time()
    rows = [
        (message_id, "user", "Emmy", "replayed words", "delivered", None, 1),
        (f"{message_id}.0", "assistant", "assistant", "stub says: replayed words", "final", message_id, 0),
    ]
    for row in rows:
        await api.db.aio(
            api.db.execute,
            "INSERT INTO messages (id, family_id, account_id, role, sender, text, status, reply_to,"
            " attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row[0], family.id, family.member_id, *row[1:], now, now),
        )
    status, body = await family.call("POST", "/v1/runtime/ensure")
    assert status == 200, body
    history = await wait_status(family, message_id, "answered", 180)
    assert any("replayed words" in r["last_user"] for r in api.llm_requests()), "not answered again"
    replies = [m for m in history["messages"] if m["reply_to"] == message_id]
    assert [r["id"] for r in replies] == [f"{message_id}.0"]


async def test_sigterm_finishes_the_reply_in_progress(api: Stack, http, tmp_path):
    api.stop("api")
    notes = Notifications(tmp_path / "notify")
    api.start_api({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
    assert await asyncio.to_thread(notes.wait_for, "READY=1", 10)
    assert await asyncio.to_thread(notes.wait_for, "WATCHDOG=1", 10)
    family = await sign_up(http, api.api_url, "Meitner")
    await wait_status(family, await family.send("warm"), "answered", 180)
    message_id = await family.send("finish me [slow:3]")
    await wait_status(family, message_id, "delivered", 30)
    proc = api.processes["api"]
    api.stop("api")  # SIGTERM, waits for the exit
    assert proc.returncode == 0
    assert notes.wait_for("STOPPING=1", 1) and notes.wait_for("STATUS=finishing replies", 1)
    row = await api.db.aio(api.db.query_one, "SELECT status FROM messages WHERE id = ?", (message_id,))
    assert row["status"] == "answered"
    api.start_api()


async def test_proactive_messages_reach_the_history_and_open_pages(api: Stack, http):
    family = await sign_up(http, api.api_url, "Curie")
    await wait_status(family, await family.send("hello"), "answered", 180)
    container = api.container(uuid.UUID(family.id))

    # No page open: the reminder is stored all the same.
    await asyncio.to_thread(run_cron_now, container, "Remind the family to water the plants", "sudo_chat")
    deadline = time.monotonic() + 150
    while True:
        status, body = await family.call("GET", "/v1/chat/messages")
        assert status == 200
        proactive = [
            m for m in body["messages"] if m["role"] == "assistant" and "water the plants" in m["text"]
        ]
        if proactive:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)
    assert proactive[0]["reply_to"] is None  # nobody asked: the agent spoke first

    # A page open: the next one shows up live.
    async def first_proactive() -> dict:
        async for event in events(family):
            if event["type"] == "message" and "feed the cat" in event["message"]["text"]:
                return event["message"]

    watcher = asyncio.create_task(first_proactive())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(run_cron_now, container, "Remind the family to feed the cat", "sudo_chat")
    live = await asyncio.wait_for(watcher, 150)
    assert live["role"] == "assistant" and live["reply_to"] is None
