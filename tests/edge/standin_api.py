"""A stand-in for sudo-api's device endpoints, on 127.0.0.1, for the edge tests.

It stands in for the real server (daemons/sudo_api/api.py and devices.py, which the Pi never
gets) and follows the same contract: pairing codes of sudo-api's length and alphabet, a
device token usable only once the code and then the confirmation code are typed, pairing states
pending/confirming (with the family's name and the code)/paired/expired/revoked, a room per device,
401 for unknown or revoked tokens, 503 `{"error": ...}` for the voice token while LiveKit is
not set up, JSON errors everywhere, Unix-second expiries and a `Date` header. What the real
server does behind it (the database, ensuring runtimes) is left out. The test plays the family
(`claim`, `confirm`, `complete`, `revoke`), the admin (`voice_configured`) and the network
(`stop`, `start`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from sudo_api.devices import CODE_ALPHABET, CODE_LENGTH


@dataclass
class PairingRecord:
    id: str
    code: str
    name: str
    token: str
    expires_at: float
    device_id: str | None = None
    family_id: str | None = None
    confirm_code: str = ""


@dataclass
class Call:
    at: float
    """time.monotonic() when it arrived."""
    method: str
    path: str
    token: str | None
    status: int = 0


@dataclass
class StandinApi:
    heartbeat_sec: float = 0.3
    pairing_ttl_sec: float = 600.0
    voice_ttl_sec: float = 900.0
    voice_configured: bool = True
    livekit_url: str = "wss://livekit.example.test"
    clock_offset: float = 0.0
    """The server's clock minus ours (seconds): a Pi before NTP is far off."""
    family: str = field(default_factory=lambda: str(uuid.uuid4()))
    family_name: str = "The Curies"
    pairings: dict[str, PairingRecord] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    """Paired device token -> device id."""
    calls: list[Call] = field(default_factory=list)
    voice_tokens: list[dict] = field(default_factory=list)
    muted: list[bool] = field(default_factory=list)
    """What each heartbeat said of the microphone, in order."""
    override: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(default_factory=dict)
    """"METHOD /path" -> a handler replacing the faithful one (fault injection)."""

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # The network

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._record])
        app.add_routes(
            [
                web.post("/v1/devices/pairing", self._pairing_start),
                web.get("/v1/devices/pairing", self._pairing_state),
                web.post("/v1/devices/heartbeat", self._heartbeat),
                web.post("/v1/voice/token", self._voice_token),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Like the server going away: connections are refused until `start()`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # The family and the admin

    def claim(self, code: str) -> None:
        """A parent types the device's code on /integrations: the device is to say the family's
        name and a confirmation code."""
        record = next(p for p in self.pairings.values() if p.code == code)
        assert record.family_id is None and record.expires_at > self.now(), "code unusable"
        record.family_id = self.family
        record.confirm_code = "".join(secrets.choice("0123456789") for _ in range(6))

    def confirm(self, code: str, heard: str) -> str:
        """The parent types back the code the device said; returns the new device's id."""
        record = next(p for p in self.pairings.values() if p.code == code)
        assert record.family_id and heard == record.confirm_code, "not the code the device says"
        record.device_id = str(uuid.uuid4())
        self.devices[record.token] = record.device_id
        return record.device_id

    def complete(self, code: str) -> str:
        """Both steps, by a parent who hears the device; returns the new device's id."""
        self.claim(code)
        return self.confirm(code, next(p for p in self.pairings.values() if p.code == code).confirm_code)

    def revoke(self, token: str) -> None:
        del self.devices[token]

    def expire(self, code: str) -> None:
        next(p for p in self.pairings.values() if p.code == code).expires_at = self.now() - 1

    def add_device(self, token: str) -> str:
        """A device paired earlier (before this server process started)."""
        device_id = str(uuid.uuid4())
        self.pairings[token] = PairingRecord(
            str(uuid.uuid4()), "XXXXXX", "old", token, 0, device_id, self.family
        )
        self.devices[token] = device_id
        return device_id

    # What the test observes

    def now(self) -> float:
        return time.time() + self.clock_offset

    def of(self, method: str, path: str, status: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and c.path == path and (status is None or c.status == status)
        ]

    @property
    def heartbeats(self) -> list[Call]:
        return self.of("POST", "/v1/devices/heartbeat", 200)

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.pairings.values() if p.code != "XXXXXX"]

    async def wait_for(self, predicate: Callable[[], object], what: str, within: float = 10.0) -> None:
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}") from None

    # The contract

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        call = Call(time.monotonic(), request.method, request.path, auth.removeprefix("Bearer ") or None)
        self.calls.append(call)
        try:
            custom = self.override.get(f"{request.method} {request.path}")
            response = await (custom or handler)(request)
        except web.HTTPException as exc:
            response = exc
        call.status = response.status
        response.headers["Date"] = _http_date(self.now())
        async with self._changed:
            self._changed.notify_all()
        return response

    def _device(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return self.devices.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None

    async def _pairing_start(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            return _error(400, "the device name must be 1 to 80 characters")
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        token = "sd_dev_" + secrets.token_urlsafe(32)
        record = PairingRecord(str(uuid.uuid4()), code, name, token, self.now() + self.pairing_ttl_sec)
        self.pairings[token] = record
        return web.json_response(
            {
                "pairing_id": record.id,
                "code": code,
                "device_token": token,
                "expires_at": record.expires_at,
                "heartbeat_sec": self.heartbeat_sec,
            },
            status=201,
        )

    async def _pairing_state(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        record = self.pairings.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if record is None:
            return _error(401, "send the device token from pairing as a bearer token")
        if record.device_id:
            state = "paired" if record.token in self.devices else "revoked"
        elif record.family_id:
            return web.json_response(
                {"state": "confirming", "family_name": self.family_name, "confirm_code": record.confirm_code}
            )
        else:
            state = "expired" if record.expires_at < self.now() else "pending"
        return web.json_response({"state": state, "device_id": record.device_id, "user_id": record.family_id})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        if self._device(request) is None:
            return _error(401, "a paired device's token is required")
        self.muted.append((await request.json())["muted"])
        return web.json_response({"next_in": self.heartbeat_sec})

    async def _voice_token(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return _error(401, "a paired device's token is required")
        if not self.voice_configured:
            return _error(503, "voice is not set up: an admin sets the LiveKit URL, key and secret")
        issued = {
            "url": self.livekit_url,
            "room": f"room_{self.family}_{device}",
            "token": f"jwt-{len(self.voice_tokens) + 1}-{secrets.token_hex(4)}",
            "expires_at": self.now() + self.voice_ttl_sec,
        }
        self.voice_tokens.append(issued | {"issued": time.monotonic(), "device": device})
        return web.json_response(issued)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _http_date(when: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))
