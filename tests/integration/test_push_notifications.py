"""Web Push with the real sudo-api and a real Hermes container: a member's browser (its key pair
made here, as a browser makes it) subscribes, and the push-service stand-in
(tests/push_service.py: checks VAPID, decrypts the payload as the browser would) receives the
agent's reply while no page of that member is open, and its proactive messages; nothing while a
page is open, nothing the member turned off, nothing for another member; and a subscription the
push service says is gone (410) is forgotten."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from control_plane import Family, join, run_cron_now, sign_up
from push_service import Browser, PushService
from stack import Stack

from sudo_api.push import summary

PUSH_WAIT_SEC = 150
"""A cold start, a turn and the push, at most."""


@pytest.fixture(scope="module")
async def push(stack: Stack) -> AsyncIterator[PushService]:
    """The stand-in, and sudo-api started with it as its one allowed push service; sudo-api is
    stopped afterwards, so the next module's `api` starts it with the usual settings."""
    async with PushService() as service:
        stack.stop("api")
        stack.start_api({"SUDO_API_PUSH_SERVICES": f"{service.url}/push/"})
        try:
            yield service
        finally:
            stack.stop("api")


async def subscribe(family: Family, service: PushService) -> Browser:
    """What the /account page's script does: the host's key, pushManager.subscribe, and the
    subscription handed to sudo-api."""
    status, body = await family.call("GET", "/v1/push/key")
    assert status == 200, body
    browser = service.subscribe(body["public_key"])
    status, body = await family.call("POST", "/v1/push/subscriptions", json=browser.subscription())
    assert status == 201, body
    return browser


async def answered(family: Family, text: str) -> str:
    """Send a message and wait for its answer; the answer's text."""
    message_id = await family.send(text)
    async with asyncio.timeout(PUSH_WAIT_SEC):
        while True:
            status, body = await family.call("GET", "/v1/chat/messages?limit=50")
            assert status == 200, body
            mine = next(m for m in body["messages"] if m["id"] == message_id)
            if mine["status"] == "answered":
                return next(m["text"] for m in body["messages"] if m["reply_to"] == message_id)
            assert mine["status"] != "failed", mine
            await asyncio.sleep(0.25)


async def next_push(service: PushService, browser: Browser, count: int) -> dict:
    async with asyncio.timeout(PUSH_WAIT_SEC):
        return (await service.wait_for(browser, count))[count - 1]


async def pushed_message(family: Family, push: dict) -> str:
    """The text of the proactive message a push tells of: its url leads to it in the thread, and
    its body is that text, shortened."""
    assert push["url"].startswith("/chat?around="), push
    message_id = push["url"].removeprefix("/chat?around=")
    status, body = await family.call("GET", f"/v1/chat/messages?around={message_id}")
    assert status == 200, body
    (message,) = [m for m in body["messages"] if m["id"] == message_id]
    assert message["role"] == "assistant" and message["reply_to"] is None  # the agent spoke first
    assert push["body"] == summary(message["text"])
    return message["text"]


async def test_a_reply_is_pushed_only_while_no_page_is_open(push: PushService, stack: Stack, http):
    owner = await sign_up(http, stack.api_url, "Lovelace")
    adult = await join(owner, "Babbage")
    phone, adults_phone = await subscribe(owner, push), await subscribe(adult, push)

    # No page open: the answer comes to the owner's phone, decrypted as the browser would.
    reply = await answered(owner, "hello there")
    message = await next_push(push, phone, 1)
    assert message == {"title": "Your assistant answered", "body": summary(reply), "url": "/chat"}
    assert message["body"].startswith("stub says: hello there")  # the reply's words, shortened

    # What the owner turned off is not sent: the next push the phone gets is the reminder.
    container = stack.container(uuid.UUID(owner.id))
    status, body = await owner.call("PUT", "/v1/push/preferences", json={"replies": False, "proactive": True})
    assert (status, body) == (200, {"replies": False, "proactive": True})
    await answered(owner, "not to be pushed")
    await asyncio.to_thread(run_cron_now, container, "Remind the family to water the plants", "sudo_chat")
    reminder = await next_push(push, phone, 2)
    assert reminder["title"] == "A message from your assistant"
    assert "water the plants" in (await pushed_message(owner, reminder))
    # Replies wanted again, but a page is open on the thread (its event stream): the page shows
    # the answer, and the next push is again the reminder.
    status, body = await owner.call("PUT", "/v1/push/preferences", json={"replies": True, "proactive": True})
    assert status == 200, body
    async with http.get(
        f"{owner.base}/v1/chat/stream",
        headers=owner.headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    ) as stream:
        assert stream.status == 200
        await answered(owner, "seen on the page")
        await asyncio.to_thread(run_cron_now, container, "Remind the family to feed the cat", "sudo_chat")
        assert "feed the cat" in (await pushed_message(owner, await next_push(push, phone, 3)))

    # The other member's phone heard nothing of the owner's thread; every push was taken.
    assert push.pushes_to(adults_phone) == []
    assert push.refused == []


async def test_a_subscription_the_push_service_says_is_gone_is_forgotten(
    push: PushService, stack: Stack, http
):
    owner = await sign_up(http, stack.api_url, "Hamilton")
    phone = await subscribe(owner, push)
    phone.gone = True  # the browser unsubscribed at its push service
    await answered(owner, "hello")
    query = "SELECT 1 FROM push_subscriptions WHERE endpoint = ?"
    async with asyncio.timeout(30):
        while True:
            if not await stack.db.aio(stack.db.query_one, query, (phone.endpoint,)):
                break
            await asyncio.sleep(0.1)
    assert (410, "the browser unsubscribed") in push.refused
    status, body = await owner.call("DELETE", "/v1/push/subscriptions", json={"endpoint": phone.endpoint})
    assert status == 404, body  # already gone


async def test_no_subscription_to_another_address_is_taken(push: PushService, stack: Stack, http):
    owner = await sign_up(http, stack.api_url, "Noether")
    browser = push.subscribe("unused").subscription()
    for endpoint in (
        "http://127.0.0.1:1/push/x",
        "https://fcm.googleapis.com/fcm/send/x",
        stack.api_url + "/",
    ):
        status, body = await owner.call(
            "POST", "/v1/push/subscriptions", json=browser | {"endpoint": endpoint}
        )
        assert status == 400, (endpoint, body)
        assert json.dumps(body).find("push service") > 0
