"""The reliability suite: bad input, isolation (and, beside them, faults and load).

By default (`make test`, CI) every test runs a bounded size; `SUDO_RELIABILITY=full` (`make
reliability`) runs the full size. Tests that try inputs record their figures (tests/figures.py),
printed at the end of the run. The helpers the tests share are in reliability_support.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from control_plane import (  # noqa: F401 (fixtures)
    add_child,
    admin_session,
    api,
    fresh_settings,
    http,
    join,
    pair,
    provisioner,
    sign_up,
    stack,
)
from figures import FIGURES, Tally
from reliability_support import Roles
from stack import Stack


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Tally:
    """This test's tally (by test name)."""
    return FIGURES(request.node.name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, hand this worker's figures to the controller (tests/conftest.py)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability_figures"] = json.dumps(FIGURES.own())


@pytest.fixture(scope="session")
async def roles(stack: Stack) -> AsyncIterator[Roles]:  # noqa: F811 (the imported fixture)
    if "api" not in stack.processes:
        stack.start_api()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        a = await sign_up(session, stack.api_url, "Ashdown")
        adult, child, removed = await join(a, "Avery"), await add_child(a, "Alfie"), await join(a, "Ada")
        status, body = await a.call("DELETE", f"/v1/family/members/{removed.member_id}")
        assert status == 204, body
        c = await sign_up(session, stack.api_url, "Cowley")
        b = await sign_up(session, stack.api_url, "Brackley")
        device_id, token = await pair(session, stack, a, "Ashdown Pi")
        admin = await admin_session(stack, session)
        async with session.post(f"{stack.api_url}/v1/admin/families/{c.id}/disable", headers=admin) as resp:
            assert resp.status == 200, await resp.text()
        service = {"Authorization": f"Bearer {stack.service_token}"}
        yield Roles(a, adult, child, removed, c, b, device_id, token, admin, service)
