"""sudo-api refuses bad input cleanly: oversized bodies, slow clients, malformed Twilio webhooks.

Every refusal is a 4xx with a JSON error (or, for a client too slow to finish its request, a
closed connection), and the database is the same after it as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from control_plane import sign_up
from ports import free_port
from reliability_support import changes, size, snapshot
from stack import BIN, Stack, wait_for
from twilio_stub import sign

from sudo_api.whatsapp import WEBHOOK_MAX


@contextlib.contextmanager
def unchanged(database: Path) -> Iterator[None]:
    """The database is the same after the block as before it."""
    before = snapshot(database)
    yield
    assert not changes(before, snapshot(database))


async def test_oversized_bodies_are_refused(api: Stack, http, figures):
    family = await sign_up(http, api.api_url, "Big")
    cases = [
        ("/v1/auth/signup", {}, b'{"email": "' + b"a" * (1 << 20) + b'"}', 413),
        ("/v1/chat/messages", family.headers, b'{"text": "' + b"a" * (300 << 10) + b'"}', 413),
        (
            "/v1/chat/messages",
            family.headers,
            b'{"text": "' + b"a" * (100 << 10) + b'"}',
            400,
        ),  # > MESSAGE_MAX
        ("/v1/devices/pairing", {}, b"[" * (200 << 10), 400),
        ("/v1/auth/login", {}, b'{"email": "x@example.org", "password": "' + b"p" * (200 << 10) + b'"}', 401),
        ("/v1/whatsapp/inbound", {}, b"Body=" + b"a" * (WEBHOOK_MAX + 1), 413),
        ("/v1/whatsapp/status", {}, b"MessageSid=" + b"S" * (1 << 20), 413),
    ]
    with unchanged(api.settings.core.database_path):
        for path, headers, body, status in cases:
            headers = headers | {"Content-Type": "application/json", "X-Forwarded-For": "192.0.2.200"}
            async with http.post(api.api_url + path, data=body, headers=headers) as resp:
                figures.tried(resp.status)
                assert resp.status == status, (path, resp.status, await resp.text())
                assert (await resp.json())["error"]

        # A body without a length, sent in chunks, is refused at the same size.
        async def chunks():
            for _ in range(64):
                yield b"a" * (16 << 10)

        async with http.post(f"{api.api_url}/v1/auth/signup", data=chunks()) as resp:
            figures.tried(resp.status)
            assert resp.status == 413
    assert api.processes["api"].poll() is None


async def test_bodies_in_unknown_or_wrong_charsets_are_refused(api: Stack, stack: Stack, http, figures):
    family = await sign_up(http, api.api_url, "Charset")
    cases = [
        ("application/json; charset=no-such-charset", b'{"text": "hi"}'),
        ("application/json; charset=utf-16", b'{"text": "hi"}'),  # not UTF-16
        ("application/json; charset=utf-8", b'{"text": "\xff\xfe"}'),
        ("application/x-www-form-urlencoded; charset=no-such-charset", b"text=hi"),
    ]
    with unchanged(api.settings.core.database_path):
        for content_type, body in cases:
            headers = family.headers | {"Content-Type": content_type}
            async with http.post(f"{api.api_url}/v1/chat/messages", data=body, headers=headers) as resp:
                figures.tried(resp.status)
                assert resp.status == 400, (content_type, resp.status, await resp.text())
        # The pages' forms likewise.
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=no-such-charset"}
        async with http.post(f"{api.api_url}/login", data=b"email=x", headers=headers) as resp:
            figures.tried(resp.status)
            assert resp.status == 400
    # The provisioner's JSON bodies likewise.
    connector = aiohttp.UnixConnector(path=str(stack.socket))
    async with aiohttp.ClientSession(connector=connector) as raw:
        for content_type, _ in cases[:3]:
            url = "http://p/v1/runtimes/evict-idle"
            async with raw.post(
                url, data=b'{"idle_sec": 1e9}', headers={"Content-Type": content_type}
            ) as resp:
                figures.tried(resp.status)
                assert resp.status in (200, 400), (content_type, resp.status, await resp.text())
                assert resp.status == 400 or content_type.endswith("utf-8")


@pytest.fixture(scope="module")
def impatient(stack: Stack) -> Iterator[tuple[str, Path]]:
    """A second sudo-api, with a database of its own and short client timeouts, so slow clients
    are cut off in the test's time (the defaults are 30 s for a body and 75 s for headers)."""
    port, state = free_port(), stack.root / "impatient"
    env = stack.env | {
        "SUDO_CORE_STATE_DIR": str(state),
        "SUDO_API_LISTEN": f"127.0.0.1:{port}",
        "SUDO_API_METRICS": f"127.0.0.1:{free_port()}",
        "SUDO_API_SERVICE_LISTEN": f"127.0.0.1:{free_port()}",
        "SUDO_API_CLIENT_TIMEOUT_SEC": "1",
        "SUDO_API_IDLE_TIMEOUT_SEC": "2",
    }
    stack._spawn("api-impatient", [str(BIN / "sudo-api")], env=env)
    wait_for(lambda: _connects(port), 30, "the impatient sudo-api")
    yield f"127.0.0.1:{port}", state / "sudo.db"
    stack.stop("api-impatient")


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def dribble(address: str, head: bytes, tail: bytes, deadline: float) -> str:
    """Send `head` at once, then `tail` a byte every 0.2 s (then nothing): what became of the
    connection within `deadline` seconds, "still open" if the server kept waiting for us."""
    host, port = address.rsplit(":", 1)
    ends = time.monotonic() + deadline
    with socket.create_connection((host, int(port)), timeout=deadline) as s:
        s.settimeout(0.2)
        answer, sent = b"", 0
        try:
            s.sendall(head)
            while time.monotonic() < ends:
                if sent < len(tail):
                    s.sendall(tail[sent : sent + 1])
                    sent += 1
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "cut off"
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "cut off"
        return "still open"


async def test_slow_clients_are_cut_off_and_others_served(stack: Stack, impatient, figures):
    address, database = impatient
    login = b'{"email": "slow@example.org", "password": "slowly typed"}'
    head = b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    slow_body = (head + b"Content-Length: %d\r\n\r\n" % len(login), login)
    slow_headers = (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\nX-Slow: " + b"z" * 200 + b"\r\n\r\n")
    silent = (b"", b"")
    kinds = [slow_body, slow_headers, silent]
    clients = [kinds[i % 3] for i in range(size(30, 300))]
    loop = asyncio.get_running_loop()
    with unchanged(database), ThreadPoolExecutor(max_workers=len(clients)) as pool:  # all at once
        pending = asyncio.gather(
            *(loop.run_in_executor(pool, dribble, address, h, t, 30) for h, t in clients)
        )
        # Meanwhile everyone else is served as usual.
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"http://{address}/healthz") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.2)
        outcomes = await pending
    for outcome in outcomes:
        figures.tried(outcome)
    # A slow body gets its 408; slow headers and silence, a closed connection. None is left open.
    assert "still open" not in outcomes, outcomes
    assert [o for (h, _), o in zip(clients, outcomes, strict=True) if h == slow_body[0]] == ["408"] * (
        len(clients) // 3 + (len(clients) % 3 > 0)
    )
    assert set(outcomes) == {"408", "cut off"}
    assert stack.processes["api-impatient"].poll() is None


@pytest.fixture
async def twilio(api: Stack, fresh_settings) -> dict[str, str]:
    settings = api.start_twilio()
    for key, value in settings.items():
        await api.db.aio(api.db.set_setting, key, value)
    return settings


async def test_malformed_twilio_webhooks_are_refused_and_store_nothing(api: Stack, http, twilio, figures):
    url = f"{api.api_url}/v1/whatsapp/inbound"
    token = twilio["twilio.auth_token"]
    good = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "From": "whatsapp:+447700900999",
        "To": "whatsapp:+1",
        "Body": "hi",
    }

    def signed(form: dict[str, str], at: str = url, key: str = token) -> dict[str, str]:
        return {
            "X-Twilio-Signature": sign(at, form, key),
            "Content-Type": "application/x-www-form-urlencoded",
        }

    # (body, headers, status): each malformed in one way, signed correctly unless that is the fault.
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (urlencode(good).encode(), {"Content-Type": "application/x-www-form-urlencoded"}, 403),  # unsigned
        (urlencode(good).encode(), {"X-Twilio-Signature": "bm9wZQ=="}, 403),
        (urlencode(good).encode(), signed(good, key="another account's token"), 403),
        (urlencode(good).encode(), signed(good, at=url.replace("inbound", "status")), 403),  # another URL
        (urlencode(good | {"Body": "changed"}).encode(), signed(good), 403),  # tampered
        (urlencode({"From": good["From"]}).encode(), signed({"From": good["From"]}), 400),  # no MessageSid
        (urlencode({"MessageSid": "SM1"}).encode(), signed({"MessageSid": "SM1"}), 400),  # no From
        (
            urlencode(good | {"From": "whatsapp:call me"}).encode(),
            signed(good | {"From": "whatsapp:call me"}),
            400,
        ),
        (b'{"MessageSid": "SM1"}', signed({}) | {"Content-Type": "application/json"}, 400),  # not a form
        (b"\xff\xfe=\x00", signed({}), 400),  # not UTF-8
        (b"a=1&&&=", signed({}), 400),
        (
            urlencode(good | {"Body": "x" * WEBHOOK_MAX}).encode(),
            signed(good | {"Body": "x" * WEBHOOK_MAX}),
            413,
        ),
    ]
    with unchanged(api.settings.core.database_path):
        for body, headers, status in cases:
            async with http.post(url, data=body, headers=headers) as resp:
                figures.tried(resp.status)
                assert resp.status == status, (body[:80], resp.status, await resp.text())
                assert (await resp.json())["error"]
        for body, headers, _ in cases[:3] + cases[4:5]:  # the status callback checks the same way
            status_url = url.replace("inbound", "status")
            async with http.post(status_url, data=body, headers=headers) as resp:
                figures.tried(resp.status)
                assert resp.status == 403
    assert not [m for m in api.twilio_messages() if m["to"] == good["From"]]  # no reply went out either
