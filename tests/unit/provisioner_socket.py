"""A provisioner's HTTP API on a unix socket in the test's own process, for ProvisionerClient to
call: the real app over the fake backend, or a stand-in's few routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, socket: Path) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(socket)).start()
    try:
        yield
    finally:
        await runner.cleanup()
