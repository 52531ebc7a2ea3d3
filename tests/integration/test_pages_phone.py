"""The website on a phone and on a desktop, in the light and the dark scheme, in a real browser
(Debian's chromium, driven by Playwright) against the real sudo-api: every page fits a 390 px
wide screen, its controls are 44 x 44 px touch targets with an accessible name, its text keeps
WCAG AA contrast, the chat composer stays on screen when the keyboard takes half of it, and a
message is sent with the keyboard alone. Screenshots of each page go to $SUDO_TEST_ARTIFACTS
(default artifacts/ at the repository's root), for a person to look at.

The member's thread is written into the database as delivery would have stored it (answered
turns, a Markdown answer, a failed message), so the page is long and shows every kind of message
without waiting for an agent. Sending a message and opening /integrations wake the family's
agent: one Hermes container, never waited for."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from browsers import chromium, signed_in
from control_plane import PASSWORD, Family, create_admin, sign_up
from playwright.async_api import Browser, BrowserContext, Page, expect
from stack import Stack

ARTIFACTS = Path(os.environ.get("SUDO_TEST_ARTIFACTS") or Path(__file__).parents[2] / "artifacts")
PHONE_WIDTH = 390
VIEWPORTS = {
    "phone": {
        "viewport": {"width": PHONE_WIDTH, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 3,
    },
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}
PAGES = ("chat", "family", "integrations", "admin")
TAP = 44
"""The least width and height of a touch target, in CSS px."""

ANSWER = """Here is a **plan**, with [a recipe](https://example.org/recipe):

| Day | Meal |
|-----|------|
| Mon | pasta |

```
print("copy me")
```

> and a `quote`
"""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
async def people(stack: Stack) -> AsyncIterator[dict[str, str]]:
    """Session tokens: a family's owner, with a long thread of every kind of message, and the
    host's admin."""
    proc = stack.processes.get("api")
    if proc is None or proc.poll() is not None:
        stack.start_api()
    async with aiohttp.ClientSession() as http:
        owner = await sign_up(http, stack.api_url, "Hopper")
        await stack.db.aio(write_thread, stack, owner)
        email = await create_admin(stack)
        async with http.post(
            f"{stack.api_url}/v1/auth/login", json={"email": email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200
            admin = (await resp.json())["token"]
        yield {"owner": owner.token, "admin": admin}


def write_thread(api: Stack, owner: Family) -> None:
    """Eight answered turns, the last answer in Markdown, then a message that failed."""
    now = time.time() - 3600
    insert = (
        "INSERT INTO messages (id, family_id, account_id, role, sender, text, status, reply_to,"
        " error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    with api.db.transaction():
        for i in range(8):
            asked, at = uuid.uuid4().hex, now + i * 60
            question = f"question {i}: what should we cook on day {i} of the week?"
            answer = ANSWER if i == 7 else f"An answer {i} long enough to wrap on a phone's narrow screen."
            row = (owner.id, owner.member_id)
            api.db.execute(insert, (asked, *row, "user", "Hopper", question, "answered", None, None, at, at))
            api.db.execute(
                insert,
                (uuid.uuid4().hex, *row, "assistant", "assistant", answer, "final", asked, None, at, at),
            )
        failed = (owner.id, owner.member_id, "user", "Hopper", "and dessert?", "failed", None)
        api.db.execute(insert, (uuid.uuid4().hex, *failed, "the assistant could not start", now, now))


async def open_as(
    browser: Browser, api: Stack, token: str, viewport: str, scheme: str
) -> tuple[BrowserContext, Page]:
    return await signed_in(browser, api.api_url, token, color_scheme=scheme, **VIEWPORTS[viewport])


async def screenshot(page: Page, name: str, full_page: bool) -> None:
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=path, full_page=full_page)  # makes the directory if need be
    data = await asyncio.to_thread(path.read_bytes)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, (path, len(data))


CHECKS = (Path(__file__).parent / "page_checks.js").read_text()
"""The measures taken in the page (page_checks.js): an expression, an object of functions."""

CONTROL_ROLE = re.compile(
    r"^\s*- (button|link|textbox|searchbox|checkbox|radio|combobox|switch|slider|spinbutton)\b(.*)$"
)


def nameless_controls(snapshot: str) -> list[str]:
    """Lines of an ARIA snapshot for a control with no accessible name (no quoted name after
    the role)."""
    return [
        line.strip()
        for line in snapshot.splitlines()
        if (m := CONTROL_ROLE.match(line)) and not m[2].startswith(' "')
    ]


async def composer_in_view(page: Page) -> tuple[bool, dict]:
    """Whether the composer is wholly within the viewport, and where it is."""
    box = await page.locator("#send").evaluate(
        "el => ({top: el.getBoundingClientRect().top, bottom: el.getBoundingClientRect().bottom,"
        " height: innerHeight})"
    )
    return box["top"] >= 0 and box["bottom"] <= box["height"] + 0.5, box


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", list(VIEWPORTS))
async def test_every_page_fits_reads_and_names_its_controls(
    stack: Stack, browser: Browser, people: dict[str, str], viewport: str, scheme: str
):
    problems: dict[str, list[str]] = {}
    for who, pages in (("owner", PAGES[:3]), ("admin", PAGES[3:])):
        context, page = await open_as(browser, stack, people[who], viewport, scheme)
        for name in pages:
            response = await page.goto(f"{stack.api_url}/{name}")
            assert response is not None and response.status == 200, (name, response and response.status)
            found: list[str] = []
            if name == "chat":
                await expect(page.locator("li.message .text.md table")).to_be_visible()
                inside, box = await composer_in_view(page)
                if not inside:
                    found.append(f"the composer is out of view: {box}")
            await screenshot(page, f"{viewport}-{scheme}-{name}", full_page=name != "chat")
            if viewport == "phone":
                # A phone widens its layout viewport (innerWidth) to fit a page that overflows:
                # both must stay within the screen's width.
                width = await page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
                if max(width) > PHONE_WIDTH:
                    found.append(f"the page is {width[0]} px wide (layout {width[1]}) on a 390 px screen")
                found += [
                    f"small target: {s}"
                    for s in await page.evaluate(f"tap => {CHECKS}.smallTargets(tap)", TAP)
                ]
            found += [f"low contrast: {s}" for s in await page.evaluate(f"() => {CHECKS}.lowContrast()")]
            found += [f"no name: {s}" for s in nameless_controls(await page.locator("body").aria_snapshot())]
            if found:
                problems[name] = found
        await context.close()
    assert not problems, "\n".join(f"{viewport}-{scheme} /{p}: {s}" for p, ss in problems.items() for s in ss)


async def test_the_composer_stays_above_the_phone_keyboard(
    stack: Stack, browser: Browser, people: dict[str, str]
):
    context, page = await open_as(browser, stack, people["owner"], "phone", "light")
    await page.goto(f"{stack.api_url}/chat")
    thread = await page.evaluate("document.scrollingElement.scrollHeight")
    assert thread > 2 * 844, thread  # a thread longer than the screen: the composer must stick
    assert (await composer_in_view(page))[0]
    # The on-screen keyboard: with interactive-widget=resizes-content it shrinks the layout
    # viewport, as a smaller window does.
    await page.set_viewport_size({"width": PHONE_WIDTH, "height": 450})
    inside, box = await composer_in_view(page)
    assert inside, box
    await page.get_by_role("textbox", name="Message your assistant").focus()
    await page.mouse.wheel(0, -300)  # scrolling the thread up leaves the composer where it is
    inside, box = await composer_in_view(page)
    assert inside, box
    await screenshot(page, "phone-light-chat-keyboard", full_page=False)
    await context.close()


async def test_a_message_is_sent_with_the_keyboard_alone(
    stack: Stack, browser: Browser, people: dict[str, str]
):
    context, page = await open_as(browser, stack, people["owner"], "desktop", "light")
    await page.goto(f"{stack.api_url}/chat")
    await expect(page.locator("body[data-live=yes]")).to_be_attached()
    box = page.get_by_role("textbox", name="Message your assistant")
    path = []
    for _ in range(30):  # Tab from the top of the page, through the header, to the composer
        await page.keyboard.press("Tab")
        path.append(await page.evaluate("(e => e.textContent.trim() || e.name)(document.activeElement)"))
        if await box.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail(f"Tab never reached the composer: {path}")
    ring = await box.evaluate("el => [getComputedStyle(el).outlineStyle, getComputedStyle(el).outlineWidth]")
    assert ring[0] != "none" and float(ring[1].removesuffix("px")) >= 2, ring  # a visible focus ring
    await page.keyboard.type("typed without a mouse")
    await page.keyboard.press("Shift+Enter")  # a new line, not a send
    await page.keyboard.type("on two lines")
    await expect(box).to_have_value("typed without a mouse\non two lines")
    await page.keyboard.press("Enter")
    said = "typed without a mouse\non two lines"
    await expect(page.locator("li.message.user .text").last).to_have_text(said)
    await expect(box).to_have_value("")
    await page.reload()  # stored, not only shown
    await expect(page.locator("li.message.user .text").last).to_have_text(said)
    await context.close()
