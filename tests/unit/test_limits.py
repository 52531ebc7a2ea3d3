"""Rate limits under a burst, in process on a real database: sixty concurrent attempts, and at
most the limit's worth of them is evaluated (a password hashed, a code looked up, a WhatsApp
code sent); the rest are 429 before anything is awaited."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp.test_utils import TestClient
from test_web import PASSWORD
from test_web import client as web_client  # noqa: F401 (the in-process app, as a fixture)

from sudo_api.limits import address_key
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


def test_an_ipv6_client_counts_as_its_64():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.7") == "192.0.2.7" == address_key("::ffff:192.0.2.7")
    assert address_key("unknown") == "unknown"


async def test_guessing_from_fresh_ipv6_addresses_of_one_64_is_one_client(web_client):  # noqa: F811
    client, _ = web_client
    wrong = [{"login": f"nobody{n}@example.org", "password": "guess guess guess"} for n in range(BURST)]

    async def from_own_address(n: int, body: dict) -> int:
        headers = {"X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"}  # Caddy says who it was
        async with client.post("/v1/auth/login", json=body, headers=headers) as resp:
            return resp.status

    statuses = Counter([await from_own_address(n, b) for n, b in enumerate(wrong)])
    per_address = API.login_attempts_per_address
    assert statuses == {401: per_address, 429: BURST - per_address}, statuses


async def test_wrong_pairing_codes_have_a_host_wide_budget(web_client):  # noqa: F811
    """Many families guessing from many addresses are still one budget: the host's."""
    client, _ = web_client
    families = API.pairing_attempts_per_host // API.pairing_attempts + 2
    statuses: Counter = Counter()
    for n in range(families):
        body = {"email": f"g{n}@example.org", "password": PASSWORD, "name": "G", "family_name": f"G{n}"}
        async with client.post("/v1/auth/signup", json=body) as resp:
            auth = {
                "Authorization": f"Bearer {(await resp.json())['token']}",
                "X-Forwarded-For": f"192.0.2.{n}",
            }
        codes = [{"code": f"ZZZZ{n:02d}{k:02d}"} for k in range(API.pairing_attempts)]
        statuses += await burst(client, "/v1/devices/pairing/complete", codes, auth)
    assert statuses[400] == API.pairing_attempts_per_host, statuses
    assert statuses[429] == families * API.pairing_attempts - API.pairing_attempts_per_host
