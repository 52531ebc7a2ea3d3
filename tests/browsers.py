"""Debian's chromium, driven by Playwright, for the tests that look at the website as a family does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, async_playwright

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
