"""The sudo-api client against the stand-in over HTTP: each failure becomes the right kind of error."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from ports import free_port
from standin_api import StandinApi

from sudo_api.devices import CODE_LENGTH
from sudo_edge.api import Refused, SudoApi, Unauthorized, Unreachable, VoiceNotConfigured
from sudo_edge.settings import ApiSettings
from sudo_edge.state import PairedDevice, StateError, TokenStore


@pytest.fixture
async def server() -> AsyncIterator[StandinApi]:
    api = StandinApi()
    await api.start()
    yield api
    await api.stop()


def client(url: str, timeout: float = 1.0) -> SudoApi:
    return SudoApi(ApiSettings(url=url, timeout_sec=timeout))


async def test_the_whole_contract_in_order(server: StandinApi):
    async with client(server.url + "/") as api:  # a trailing slash in the config is fine
        pairing = await api.start_pairing("x" * 100)
        assert server.pairings[pairing.device_token].name == "x" * 80, "names are cut to sudo-api's 80"
        assert len(pairing.code) == CODE_LENGTH and pairing.device_token.startswith("sd_dev_")
        assert 595 < pairing.expires_in <= 600
        assert (await api.pairing_state(pairing.device_token)).state == "pending"
        with pytest.raises(Unauthorized):
            await api.heartbeat(pairing.device_token)  # not usable until the code is typed
        server.claim(pairing.code)
        state = await api.pairing_state(pairing.device_token)
        assert (state.state, state.family_name) == ("confirming", server.family_name)
        assert len(state.confirm_code) == 6 and state.confirm_code.isdigit()
        with pytest.raises(Unauthorized):
            await api.heartbeat(pairing.device_token)  # nor until the device's own code is typed back
        device = server.confirm(pairing.code, state.confirm_code)
        state = await api.pairing_state(pairing.device_token)
        assert (state.state, state.device_id, state.user_id) == ("paired", device, server.family)
        assert await api.heartbeat(pairing.device_token) == server.heartbeat_sec
        voice = await api.voice_token(pairing.device_token)
        assert (voice.url, voice.room) == (server.livekit_url, f"room_{server.family}_{device}")
        assert 890 < voice.remaining() <= 900
        server.revoke(pairing.device_token)
        assert (await api.pairing_state(pairing.device_token)).state == "revoked"
        with pytest.raises(Unauthorized, match="a paired device's token is required"):
            await api.heartbeat(pairing.device_token)
        with pytest.raises(Unauthorized):
            await api.pairing_state("sd_dev_unknown")


async def test_expiries_follow_the_servers_clock_not_the_pis(server: StandinApi):
    server.clock_offset = 3 * 86400.0  # the Pi booted without NTP: its clock is days behind
    server.voice_ttl_sec = 60
    token = "sd_dev_t"
    server.add_device(token)
    async with client(server.url) as api:
        voice = await api.voice_token(token)
    assert 57 < voice.remaining() <= 60


async def test_voice_not_set_up_is_its_own_error(server: StandinApi):
    server.voice_configured = False
    server.add_device("sd_dev_t")
    async with client(server.url) as api:
        with pytest.raises(VoiceNotConfigured, match="voice is not set up"):
            await api.voice_token("sd_dev_t")
        assert await api.heartbeat("sd_dev_t") == server.heartbeat_sec


async def test_a_refused_connection_is_unreachable():
    async with client(f"http://127.0.0.1:{free_port()}") as api:
        with pytest.raises(Unreachable, match=r"cannot reach sudo-api at http://127\.0\.0\.1:"):
            await api.heartbeat("sd_dev_t")


async def test_a_server_that_does_not_answer_is_unreachable_after_the_timeout(server: StandinApi):
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response({"next_in": 30})

    server.override["POST /v1/devices/heartbeat"] = slow
    async with client(server.url, timeout=0.3) as api:
        with pytest.raises(Unreachable, match=r"did not answer POST /v1/devices/heartbeat within 0\.3 s"):
            await api.heartbeat("sd_dev_t")


@pytest.mark.parametrize(
    ("response", "kind", "message"),
    [
        (
            lambda: web.Response(status=502, text="<h1>Bad Gateway</h1>"),
            Unreachable,
            "HTTP 502: no JSON error",
        ),
        (
            lambda: web.json_response({"error": "database is locked"}, status=500),
            Unreachable,
            "database is locked",
        ),
        (
            lambda: web.json_response({"error": "maintenance"}, status=503),
            Unreachable,
            "HTTP 503: maintenance",
        ),
        (lambda: web.Response(status=200, text="<html>captive portal</html>"), Unreachable, "not JSON"),
        (lambda: web.json_response({"next_in": "soon"}), Unreachable, "'next_in' is 'soon'"),
        (lambda: web.json_response({"error": "bad request"}, status=400), Refused, "HTTP 400: bad request"),
        (lambda: web.Response(status=404, text="Not Found"), Unreachable, "HTTP 404: no JSON error"),
    ],
)
async def test_errors_and_garbage_become_the_right_kind(server: StandinApi, response, kind, message):
    async def answer(_request: web.Request) -> web.Response:
        return response()

    server.override["POST /v1/devices/heartbeat"] = answer
    async with client(server.url) as api:
        with pytest.raises(kind, match=message):
            await api.heartbeat("sd_dev_t")


# The token on disk


def test_the_token_is_saved_atomically_and_only_for_its_user(tmp_path: Path):
    store = TokenStore(tmp_path / "state")
    store.check()
    old = os.umask(0)
    try:
        store.save(PairedDevice("sd_dev_one", "d1", "f1"))
        store.save(PairedDevice("sd_dev_two", "d2", "f2"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == PairedDevice("sd_dev_two", "d2", "f2")
    assert sorted(p.name for p in store.dir.iterdir()) == ["device.json"], "no temporary file left"
    store.forget()
    assert store.load() is None
    store.forget()  # twice is fine


def test_an_unreadable_token_file_means_pairing_again(tmp_path: Path, caplog):
    store = TokenStore(tmp_path)
    store.path.write_text("{half a JSON")
    assert store.load() is None
    assert "ignoring unreadable" in caplog.text


def test_a_state_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot be created"):
        TokenStore(tmp_path / "file" / "state").check()
