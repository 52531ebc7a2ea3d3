"""Guessing is bounded: passwords, device pairing codes and WhatsApp link codes.

Behind Caddy every request comes from 127.0.0.1, so the limits per client address read the
address Caddy appends to X-Forwarded-For; these tests speak as several clients that way (the
addresses are only header values, from the documentation ranges).
"""

from __future__ import annotations

import aiohttp
import pytest
from control_plane import Family, sign_up
from stack import Stack

PASSWORD = "correct horse battery"  # what sign_up sets


def client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], **kw) -> tuple[int, dict, str]:
    async with http.post(url, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None) or {}, resp.headers.get("Retry-After", "")


async def test_login_guesses_are_limited_per_account_and_per_address(api: Stack, http, figures):
    settings = api.settings.api
    url = f"{api.api_url}/v1/auth/login"
    victim = await sign_up(http, api.api_url, "Lovelace")
    # One address guessing at many accounts: up to its own limit, then refused even a right password.
    attacker = client("203.0.113.7")
    for i in range(settings.login_attempts_per_address):
        wrong = {"email": f"nobody-{i}@example.org", "password": "wrong password!"}
        status, _, _ = await post(http, url, attacker, json=wrong)
        figures.tried(status)
        assert status == 401
    right = {"email": victim.account["email"], "password": PASSWORD}
    status, body, retry = await post(http, url, attacker, json=right)
    figures.tried(status)
    assert status == 429 and int(retry) > 0 and "too many" in body["error"]
    # Everyone else behind the same proxy still logs in: the limit is the attacker's alone.
    status, _, _ = await post(http, url, client("198.51.100.20"), json=right)
    assert status == 200
    # A client cannot shed its address by writing its own X-Forwarded-For: the proxy appends the
    # peer it saw, and that last hop is what counts.
    status, _, _ = await post(http, url, {"X-Forwarded-For": "192.0.2.99, 203.0.113.7"}, json=right)
    figures.tried(status)
    assert status == 429


async def test_pairing_code_guesses_are_limited(api: Stack, http, figures):
    settings = api.settings.api
    url = f"{api.api_url}/v1/devices/pairing"
    async with http.post(url, json={"name": "Hall Pi"}, headers=client("198.51.100.30")) as resp:
        code = (await resp.json())["code"]
    wrong = "ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY"
    guesser = await sign_up(http, api.api_url, "Guesser")
    address = client("203.0.113.40")

    async def complete(family: Family, code: str, headers: dict[str, str]) -> tuple[int, dict, str]:
        return await post(http, f"{url}/complete", family.headers | headers, json={"code": code})

    for _ in range(settings.pairing_attempts):
        status, _, _ = await complete(guesser, wrong, address)
        figures.tried(status)
        assert status == 400
    status, body, retry = await complete(guesser, code, client("203.0.113.41"))
    figures.tried(status)
    assert status == 429 and int(retry) > 0, body  # even the right code: guessing gains nothing
    # Another family guessing from the same address is stopped at the address's limit.
    spent = settings.pairing_attempts
    others = [await sign_up(http, api.api_url, f"Guesser{i}") for i in range(4)]
    for family in others:
        for _ in range(min(settings.pairing_attempts, settings.pairing_attempts_per_address - spent)):
            status, _, _ = await complete(family, wrong, address)
            figures.tried(status)
            assert status == 400
            spent += 1
    if spent >= settings.pairing_attempts_per_address:
        status, _, _ = await complete(others[-1], wrong, address)
        figures.tried(status)
        assert status == 429
    # The device's owner, elsewhere, pairs it with the code all the same.
    owner = await sign_up(http, api.api_url, "Owner")
    status, body, _ = await complete(owner, code, client("198.51.100.31"))
    assert status == 202 and body["pairing"]["state"] == "confirming", body


async def test_pairings_started_from_one_address_are_limited(api: Stack, http, figures):
    url = f"{api.api_url}/v1/devices/pairing"
    address = client("203.0.113.50")
    before = (await api.db.aio(api.db.query_one, "SELECT count(*) FROM pairings"))[0]
    for _ in range(api.settings.api.pairing_starts_per_address):
        status, _, _ = await post(http, url, address, json={"name": "Flood"})
        figures.tried(status)
        assert status == 201
    status, _, retry = await post(http, url, address, json={"name": "Flood"})
    figures.tried(status)
    assert status == 429 and int(retry) > 0
    after = (await api.db.aio(api.db.query_one, "SELECT count(*) FROM pairings"))[0]
    assert after == before + api.settings.api.pairing_starts_per_address  # the refused one stored nothing
    status, _, _ = await post(http, url, client("198.51.100.50"), json={"name": "Real Pi"})
    assert status == 201


@pytest.mark.usefixtures("fresh_settings")
async def test_whatsapp_codes_sent_to_a_number_are_limited(api: Stack, http, figures):
    for key, value in api.start_twilio().items():
        await api.db.aio(api.db.set_setting, key, value)
    number = "+447700900555"
    sent_before = len(api.twilio_messages())
    first, second = await sign_up(http, api.api_url, "Codes1"), await sign_up(http, api.api_url, "Codes2")
    limit = api.settings.api.whatsapp_codes_per_number
    for i in range(limit):
        status, body = await (first if i % 2 else second).call(
            "POST", "/v1/whatsapp/numbers", json={"number": number}
        )
        figures.tried(status)
        assert status == 201, body
    # Each code allows five guesses; new codes for the number stop here, whichever family asks.
    for family in (first, second):
        status, body = await family.call("POST", "/v1/whatsapp/numbers", json={"number": number})
        figures.tried(status)
        assert status == 429 and "too many codes" in body["error"]
    assert len(api.twilio_messages()) == sent_before + limit  # and nothing more was sent to it
    figures.notes["guesses_per_number_per_window"] = limit * 5
