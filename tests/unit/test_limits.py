"""Rate limits under a burst, in process on a real database: sixty concurrent attempts, and at
most the limit's worth of them is evaluated (a password hashed, a code looked up, a WhatsApp
code sent); the rest are 429 before anything is awaited."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp.test_utils import TestClient
from test_web import PASSWORD
from test_web import client as web_client  # noqa: F401 (the in-process app, as a fixture)

from sudo_core.config import ApiSettings

BURST = 60
API = ApiSettings()


async def burst(client: TestClient, path: str, bodies: list[dict], headers: dict | None = None) -> Counter:
    """POST every body at once; the statuses, counted (every 429 must say when to come back)."""

    async def post(body: dict) -> int:
        async with client.post(path, json=body, headers=headers or {}) as resp:
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) > 0 and "try again in" in (await resp.json())["error"]
            return resp.status

    return Counter(await asyncio.gather(*(post(b) for b in bodies)))


async def family_token(client: TestClient) -> str:
    body = {"email": "ada@example.org", "password": PASSWORD, "name": "Ada", "family_name": "Lovelace"}
    async with client.post("/v1/auth/signup", json=body) as resp:
        assert resp.status == 201
        return (await resp.json())["token"]


async def test_a_burst_of_wrong_passwords_gets_the_limit_checked(web_client):  # noqa: F811
    client, _ = web_client
    await family_token(client)
    wrong = [{"login": "ada@example.org", "password": f"guess number {n}"} for n in range(BURST)]
    statuses = await burst(client, "/v1/auth/login", wrong)
    assert statuses == {401: API.login_attempts, 429: BURST - API.login_attempts}, statuses
    right = {"login": "ada@example.org", "password": PASSWORD}
    assert (await burst(client, "/v1/auth/login", [right])) == {429: 1}  # locked, right or wrong


async def test_a_burst_of_pairing_codes_gets_the_limit_checked(web_client):  # noqa: F811
    client, _ = web_client
    auth = {"Authorization": f"Bearer {await family_token(client)}"}
    codes = [{"code": f"ZZZ{n:03d}"} for n in range(BURST)]
    statuses = await burst(client, "/v1/devices/pairing/complete", codes, auth)
    assert statuses == {400: API.pairing_attempts, 429: BURST - API.pairing_attempts}, statuses


async def test_a_burst_of_whatsapp_codes_to_one_number_sends_the_limit(web_client):  # noqa: F811
    """Twilio is not configured here, so a code that would be sent is a 503; the limit is what
    the host's Twilio account would pay for."""
    client, _ = web_client
    auth = {"Authorization": f"Bearer {await family_token(client)}"}
    link = [{"number": "+447700900123"}] * BURST
    statuses = await burst(client, "/v1/whatsapp/numbers", link, auth)
    assert statuses == {503: API.whatsapp_codes_per_number, 429: BURST - API.whatsapp_codes_per_number}
    reset = [{"number": "+447700900124"}] * BURST
    statuses = await burst(client, "/v1/auth/reset/whatsapp", reset)
    assert statuses == {202: API.whatsapp_codes_per_number, 429: BURST - API.whatsapp_codes_per_number}
