"""Debian's chromium, driven by Playwright, for the tests that look at the website as a family does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
NO_SANDBOX = "--no-sandbox"
"""The tests run as root in a container, where chromium's sandbox cannot start."""


@contextlib.asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Browser]:
    """A headless chromium, started with `args` besides NO_SANDBOX."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[NO_SANDBOX, *args])
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Browser, base: str, token: str, **options: Any) -> tuple[BrowserContext, Page]:
    """A new context of `browser` (Playwright's context `options`) holding the session `token` of
    the sudo-api at `base`, and a page in it."""
    context = await browser.new_context(**options)
    await context.add_cookies([{"name": "sudo_session", "value": token, "url": base}])
    return context, await context.new_page()


@contextlib.asynccontextmanager
async def chromium_profile(profile: Path) -> AsyncIterator[BrowserContext]:
    """A headless chromium with its profile on disk (Playwright's contexts are incognito)."""
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=[NO_SANDBOX]
        )
        try:
            yield context
        finally:
            await context.close()
