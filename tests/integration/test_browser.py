"""A real browser (Debian's chromium, driven by Playwright) against the real sudo-api, provisioner,
gateway and a real Hermes container: sign up, chat with the reply streaming in, reload, and an
admin rotating the LLM key with no container restarted, then an answer in Markdown shown
formatted with an XSS corpus in it that runs nothing, and a search that lands on the message;
a family of three, each in their own browser, chatting at once in their own threads; the
family's Home thread of voice turns."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from browsers import chromium, signed_in
from control_plane import create_admin, join, pair
from control_plane import sign_up as sign_up_by_api
from playwright.async_api import Browser, Page, expect
from stack import Stack, wait_for

PASSWORD = "correct horse battery"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def sign_up(page: Page, base: str, name: str) -> str:
    email = f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.org"
    await page.goto(f"{base}/signup")
    await page.get_by_label("Family name").fill(f"The {name}s")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page).to_have_url(f"{base}/chat")
    return email


@pytest.mark.usefixtures("fresh_settings")
async def test_a_family_chats_and_an_admin_rotates_the_llm_key(api: Stack, browser: Browser, http):
    base = api.api_url
    page = await browser.new_page()
    await sign_up(page, base, "Rosalind")
    await expect(page.locator("body[data-live=yes]")).to_be_attached()

    await page.get_by_placeholder("Message your assistant").fill("tell me a story [drip:0.15]")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#status")).to_have_text("Waking your assistant…", timeout=10_000)
    draft = page.locator("li.message.assistant.draft .text")
    await expect(draft).to_contain_text("stub says", timeout=120_000)  # being written
    final = page.locator("li.message.assistant.final .text")
    await expect(final).to_contain_text("tell me a story", timeout=120_000)
    assert await draft.count() == 0  # the draft became the stored reply

    await page.reload()
    await expect(page.locator("li.message.user .text")).to_have_text(["tell me a story [drip:0.15]"])
    await expect(page.locator("li.message.assistant.final .text")).to_contain_text(["stub says"])
    family_id = uuid.UUID(
        await api.db.aio(
            lambda: api.db.query_one(
                "SELECT family_id FROM messages WHERE text = ?", ("tell me a story [drip:0.15]",)
            )["family_id"]
        )
    )
    container = api.container(family_id)
    started_at = container.attrs["State"]["StartedAt"]

    # An admin (made with sudoctl) sets a new provider key in the browser.
    admin_email = await create_admin(api)
    new_key = f"sk-ROTATED-{secrets.token_hex(8)}"
    api.llm_keys.write_text(new_key + "\n")  # the provider now accepts only the new key
    admin = await browser.new_page()
    await admin.goto(f"{base}/login")
    await admin.get_by_label("Email").fill(admin_email)
    await admin.get_by_label("Password").fill(PASSWORD)
    await admin.get_by_role("button", name="Log in").click()
    await expect(admin).to_have_url(f"{base}/admin")
    await expect(admin.locator("#fleet")).to_contain_text("The Rosalinds")
    await expect(admin.locator("#fleet")).to_contain_text("running")
    await admin.get_by_role("link", name="Settings").click()
    await admin.get_by_label("LLM API key").fill(new_key)
    await admin.get_by_role("button", name="Save").click()
    await expect(admin.get_by_role("status")).to_have_text("Saved.")
    await expect(admin.get_by_label("LLM API key")).to_have_attribute(
        "placeholder", "set: leave empty to keep"
    )

    asked = len(api.llm_requests())
    await page.get_by_placeholder("Message your assistant").fill("and another")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("li.message.assistant.final .text").last).to_contain_text(
        "and another", timeout=120_000
    )
    used = {r["authorization"] for r in api.llm_requests()[asked:]}
    assert used == {f"Bearer {new_key}"}
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started_at  # the same container, never restarted

    await formatted_answers_run_nothing(api, http, page)
    await a_search_lands_on_the_message(page, base, "tell me a story [drip:0.15]")


FORMATTED = """Here is a **plan** for the week:

| Day | Meal |
|-----|------|
| Mon | pasta |
| Tue | soup |

```
print("copy me")
```

See [the recipe](https://example.org/recipe) or <https://example.org/auto>.

<script>window.__pwned = "script"</script>

<img src=x onerror="window.__pwned = 'img'; alert('img')">

<svg onload="window.__pwned = 'svg'"></svg>

[js](javascript:alert('link')) [entity](&#106;avascript:window.__pwned='entity')
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) <javascript:alert('auto')>

[ref][r] and `<img src=x onerror="window.__pwned = 'code'">`

[r]: javascript:window.__pwned='ref'

***<img src=x onerror="window.__pwned = 'emphasis'">*** <a href="javascript:alert('a')">raw</a>
"""
"""The model's answer: Markdown to show formatted, and payloads that try to set window.__pwned
or open a dialog, as raw HTML, javascript: and data: links (plain, entity-encoded, autolinks,
reference links), in code spans and emphasis."""


async def formatted_answers_run_nothing(api: Stack, http, page: Page) -> None:
    """An answer in Markdown, as it streams and once stored (live, then rendered by the page):
    a table, a code block with a copy button that copies it, links with rel=noopener noreferrer;
    no payload of the corpus opens a dialog, runs, or becomes an element or link."""
    dialogs: list[str] = []

    async def on_dialog(dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api.api_url)
    async with http.post(f"{api.llm_url}/_stub/answers", json={"name": "md", "text": FORMATTED}) as resp:
        assert resp.status == 200
    await page.get_by_placeholder("Message your assistant").fill("plan my week [answer:md] [drip:0.05]")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("li.message.assistant.draft .text strong")).to_have_text("plan", timeout=60_000)
    answer = page.locator("li.message.assistant.final").last
    await expect(answer.locator("td")).to_have_text(["Mon", "pasta", "Tue", "soup"], timeout=60_000)
    for shown in ("live", "rendered by the page"):
        await expect(answer.locator("th")).to_have_text(["Day", "Meal"])
        await expect(answer.locator("strong").first).to_have_text("plan")
        await expect(answer.locator("div.code pre")).to_have_text('print("copy me")')
        link = answer.get_by_role("link", name="the recipe")
        await expect(link).to_have_attribute("href", "https://example.org/recipe")
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        hrefs = await answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert hrefs == ["https://example.org/recipe", "https://example.org/auto"], (shown, hrefs)
        rels = await answer.locator("a").evaluate_all("links => links.map(a => a.rel)")
        assert rels == ["noopener noreferrer"] * 2, (shown, rels)
        assert await answer.locator("script, img, svg, iframe, object, [onerror], [onload]").count() == 0
        await expect(answer.locator(".text")).to_contain_text("<script>window.__pwned")  # shown, as text
        await expect(answer.locator(".text")).to_contain_text("[js](javascript:alert('link'))")
        await answer.locator("button.copy").click()
        await expect(answer.locator("button.copy")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == 'print("copy me")'
        assert await page.evaluate("window.__pwned") is None, shown
        assert dialogs == [], shown
        await page.reload()
        await expect(page.locator("body[data-live=yes]")).to_be_attached()
        answer = page.locator("li.message.assistant.final").last


async def a_search_lands_on_the_message(page: Page, base: str, said: str) -> None:
    """The search box finds the member's message and its answer, the word marked; a result opens
    the history around the message, which is marked and in view."""
    await page.get_by_role("searchbox", name="Search your messages").fill("story")
    await page.get_by_role("button", name="Search").click()
    await expect(page).to_have_url(f"{base}/chat?q=story")
    results = page.locator("#results li a")
    await expect(results).to_have_count(2)  # the member's message and the answer, newest first
    await expect(results.locator("mark")).to_have_text(["story", "story"])
    await expect(results.last).to_contain_text(said)
    await results.last.click()
    await expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/chat\?around=(\w+)#m-\1$"))
    found = page.locator("li.message.found")
    await expect(found).to_have_count(1)
    await expect(found.locator(".text")).to_have_text(said)
    assert f"#{await found.get_attribute('id')}" == page.url[page.url.index("#") :]
    await expect(found).to_be_in_viewport()


@pytest.mark.usefixtures("fresh_settings")
async def test_integrations_pair_a_device_and_link_a_number(api: Stack, browser: Browser, http):
    base = api.api_url
    for key, value in api.start_twilio().items():
        await api.db.aio(api.db.set_setting, key, value)
    page = await browser.new_page()
    await sign_up(page, base, "Marconi")
    await page.goto(f"{base}/integrations")
    family_id = uuid.UUID(
        await page.evaluate("fetch('/v1/me').then(r => r.json()).then(b => b.account.user_id)")
    )

    # The device asks for a code; the family types it; the device says the family's name and a
    # second code, typed back (a wrong one first); the device's beats show it online.
    async with http.post(f"{base}/v1/devices/pairing", json={"name": "Living room Pi"}) as resp:
        started = await resp.json()
    await page.get_by_label("Pairing code").fill(started["code"])
    await page.get_by_role("button", name="Pair").click()
    await expect(page.locator("#confirm-pairing")).to_contain_text("Living room Pi now says")
    beat = {"Authorization": f"Bearer {started['device_token']}"}
    async with http.get(f"{base}/v1/devices/pairing", headers=beat) as resp:
        said = await resp.json()
    assert said["state"] == "confirming" and said["family_name"] == "The Marconis"
    await page.get_by_label("Code the device says").fill(f"{(int(said['confirm_code']) + 1) % 10**6:06d}")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator(".error")).to_contain_text("listen again")
    await page.get_by_label("Code the device says").fill(said["confirm_code"])
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_have_text("Living room Pi is paired.")
    await expect(page.locator("tr", has_text="Living room Pi")).to_contain_text("offline")
    async with http.post(f"{base}/v1/devices/heartbeat", headers=beat) as resp:
        assert resp.status == 200
    await page.reload()
    await expect(page.locator("tr", has_text="Living room Pi")).to_contain_text("online")
    await expect(page.locator("tr", has_text="Living room Pi")).not_to_contain_text("muted")
    async with http.post(f"{base}/v1/devices/heartbeat", headers=beat, json={"muted": True}) as resp:
        assert resp.status == 200  # muted at the device: the family sees it
    await page.reload()
    await expect(page.locator("tr", has_text="Living room Pi")).to_contain_text("online · microphone muted")

    # A WhatsApp number, proven by the code it receives.
    await page.get_by_label("WhatsApp number").fill("+33 6 12 34 56 78")
    await page.get_by_role("button", name="Send a code").click()
    await expect(page.get_by_role("status")).to_contain_text("A code was sent to +33612345678")
    code = api.twilio_messages()[-1]["body"].split("code is ")[1][:6]
    await page.get_by_label("Code for +33612345678").fill(code)
    await page.get_by_role("button", name="Verify").click()
    await expect(page.locator("#numbers")).to_contain_text("linked")

    # Opening the page woke the family's agent (in the background: on a busy host it may still be
    # on its way).
    await asyncio.to_thread(wait_for, lambda: api.container(family_id), 120, "the woken agent", 0.5)
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text("Device revoked.")
    async with http.post(f"{base}/v1/devices/heartbeat", headers=beat) as resp:
        assert resp.status == 401


async def say(page: Page, text: str) -> None:
    await expect(page.locator("body[data-live=yes]")).to_be_attached()
    await page.get_by_placeholder("Message your assistant").fill(text)
    await page.get_by_role("button", name="Send").click()
    reply = page.locator("li.message.assistant.final .text")
    await expect(reply).to_contain_text(f"stub says: {text}", timeout=120_000)  # a cold start


async def test_a_family_of_three_each_chat_in_their_own_thread(api: Stack, browser: Browser):
    base = api.api_url
    await create_admin(api)  # a host that is set up: its /login is the login page

    async def person() -> Page:  # a context of its own: its own cookies
        return await (await browser.new_context()).new_page()

    owner, adult, child = await person(), await person(), await person()
    await sign_up(owner, base, "Curie")
    await owner.goto(f"{base}/family")
    await owner.get_by_role("button", name="Create an invitation link").click()
    link = await owner.locator("#invite-link").get_attribute("href")
    assert link is not None and re.fullmatch(rf"{re.escape(base)}/join/[\w-]+", link), link
    await expect(owner.locator("#invite-link")).to_have_text(link)
    await expect(owner.locator("#invite-qr svg")).to_be_visible()
    await expect(owner.locator("#invitations")).to_contain_text("as adult")

    # The adult joins from the link.
    await adult.goto(link)
    await expect(adult.get_by_role("heading", level=1)).to_contain_text("The Curies")
    await adult.get_by_label("Your name").fill("Pierre")
    await adult.get_by_label("Email").fill(f"pierre-{uuid.uuid4().hex[:6]}@example.org")
    await adult.get_by_label("Password").fill(PASSWORD)
    await adult.get_by_role("button", name="Join").click()
    await expect(adult).to_have_url(f"{base}/chat")

    await owner.goto(f"{base}/family")
    members = owner.locator("#members tr")
    await expect(members.filter(has_text="Pierre").locator(".role")).to_have_text("adult")
    await expect(owner.locator("#invitations")).to_contain_text("No pending invitation.")
    stranger = await person()
    used = await stranger.goto(link)
    assert used is not None and used.status == 404
    await expect(stranger.locator("main")).to_contain_text("invitation")

    # A child, added by the owner, logs in with a username.
    username = f"irene-{uuid.uuid4().hex[:6]}"
    await owner.get_by_label("Child's name").fill("Irene")
    await owner.get_by_label("Username").fill(username)
    await owner.get_by_label("Child's password").fill(PASSWORD)
    await owner.get_by_role("button", name="Add child").click()
    await expect(members.filter(has_text="Irene").locator(".role")).to_have_text("child")
    await child.goto(f"{base}/login")
    await child.get_by_label("Email or username").fill(username)
    await child.get_by_label("Password").fill(PASSWORD)
    await child.get_by_role("button", name="Log in").click()
    await expect(child).to_have_url(f"{base}/chat")

    # All three at once, each in their own thread.
    await owner.goto(f"{base}/chat")
    said = {owner: "what is radium", adult: "how do crystals grow", child: "why is the sky blue"}
    await asyncio.gather(*(say(page, text) for page, text in said.items()))
    for page, text in said.items():
        await page.reload()
        await expect(page.locator("li.message.user .text")).to_have_text([text])
        # /v1, called from the member's own page (their cookie), shows the same one thread.
        history = await page.evaluate("fetch('/v1/chat/messages').then(r => r.json())")
        assert [m["text"] for m in history["messages"] if m["role"] == "user"] == [text]
    # The agent was told who spoke on each turn: the name, and the role Sudo vouches for.
    seen = " ".join(r["speaker"] for r in api.llm_requests() if r.get("speaker"))
    for label in ("Curie [adult]", "Pierre [adult]", "Irene [child]"):
        assert label in seen, (label, seen)

    # The child is no parent.
    await child.goto(f"{base}/family")
    await expect(child.locator("#members")).to_contain_text("Irene")
    await expect(child.get_by_role("button", name="Create an invitation link")).to_have_count(0)
    await expect(child.get_by_role("button", name="Add child")).to_have_count(0)
    refused = await child.evaluate(
        """fetch('/v1/family/invitations', {method: 'POST', headers: {
            'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content,
            'Content-Type': 'application/json'}, body: '{}'})
          .then(async r => [r.status, await r.text()])"""
    )
    assert refused[0] == 403 and "parents" in refused[1], refused
    await child.goto(f"{base}/integrations")
    await child.get_by_label("Pairing code").fill("ABC123")
    await child.get_by_role("button", name="Pair").click()
    await expect(child.get_by_role("alert")).to_contain_text("parents")

    # The owner removes the adult, whose next page is the login.
    await owner.goto(f"{base}/family")
    await members.filter(has_text="Pierre").get_by_role("button", name="Remove").click()
    await expect(members.filter(has_text="Pierre")).to_have_count(0)
    await adult.reload()
    await expect(adult).to_have_url(re.compile(rf"^{re.escape(base)}/login"))


async def test_a_member_reads_the_home_devices_turns_live_in_the_home_thread(
    api: Stack, browser: Browser, http
):
    base = api.api_url
    owner = await sign_up_by_api(http, base, "Meitner")
    adult = await join(owner, "Otto")
    device_id, _ = await pair(http, api, owner, "Hall Pi")

    async def voice_turn(heard: str, answered: str) -> None:  # as the voice bridge reports one
        body = {"room": f"room_{owner.id}_{device_id}", "heard": heard, "answered": answered}
        auth = {"Authorization": f"Bearer {api.service_token}"}
        async with http.post(f"{api.service_url}/v1/service/voice/turns", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()

    await voice_turn("is it raining", "Not yet.")
    _, page = await signed_in(browser, base, adult.token)
    await page.goto(f"{base}/chat")
    await expect(page.locator("li.message")).to_have_count(0)  # the adult's own thread
    await page.get_by_role("link", name="Home", exact=True).click()
    await expect(page).to_have_url(f"{base}/chat?thread=home")
    await expect(page.locator("li.message .who")).to_have_text(["Hall Pi", "Assistant"])
    await expect(page.locator("li.message .text")).to_have_text(["is it raining", "Not yet."])
    await expect(page.locator("#send")).to_have_count(0)  # the Home thread is the devices' to speak in
    await expect(page.locator("body[data-live=yes]")).to_be_attached()
    await voice_turn("and tomorrow", "Sunny.")  # shown as it is kept
    await expect(page.locator("li.message .text")).to_have_text(
        ["is it raining", "Not yet.", "and tomorrow", "Sunny."]
    )
    await page.get_by_role("link", name="Me", exact=True).click()
    await expect(page).to_have_url(f"{base}/chat")
    await expect(page.locator("body[data-live=yes]")).to_be_attached()
    await voice_turn("thanks", "You're welcome.")  # live on every page, shown only in Home
    await page.wait_for_timeout(1000)
    await expect(page.locator("li.message")).to_have_count(0)
