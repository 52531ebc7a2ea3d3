"""A stand-in for a browser vendor's Web Push service (Google's FCM, Mozilla's autopush, Apple's
and Microsoft's), and for the browser that subscribed there.

It holds what the real pair hold, and checks a push as the real service would before it takes it:
- `subscribe()` is the browser's pushManager.subscribe: a P-256 key pair and a 16-byte auth
  secret made here (the browser keeps the private key), an endpoint URL at this service, and
  the application server key the subscription is restricted to (RFC 8292 section 4.2).
- A push (RFC 8030 section 5) is a POST to the endpoint with a TTL header (400 without one), an
  Urgency if any of the four values, and a body of at most 4096 bytes (413 past it).
- VAPID (RFC 8292): `Authorization: vapid t=<JWT>, k=<key>`; the JWT is ES256 and verified with
  `k`, which must be the key the subscription was made with (403 otherwise); its `aud` is the
  endpoint's origin, its `exp` in the future and within 24 hours, its `sub` a mailto: or
  https: URL (401 for any of these wrong).
- The body is `Content-Encoding: aes128gcm` (RFC 8188) as RFC 8291 has it: one record, the
  sender's ephemeral public key as the key id, and it decrypts with the subscription's private
  key and auth secret (the browser's half, done here), else 400.
Taken: 201 with a Location, and the decrypted message kept for the test. An endpoint can be
told to answer 410 Gone (the browser unsubscribed), as the real services do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from ports import free_port

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Browser:
    """One subscription: what the browser keeps (its private key) and what it hands the site."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    server_key: str
    """The application server key (the site's VAPID public key) it was made with."""
    gone: bool = False

    def subscription(self) -> dict[str, Any]:
        """PushSubscription.toJSON(), as a page hands it to the site."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64encode(point), "auth": b64encode(self.auth)}}


@dataclass
class Push:
    """A push the service took, as the browser decrypted it."""

    endpoint: str
    message: dict[str, Any]
    ttl: int
    claims: dict[str, Any]


@dataclass
class PushService:
    port: int = field(default_factory=free_port)
    browsers: dict[str, Browser] = field(default_factory=dict)
    received: list[Push] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    """(status, why) of every push refused."""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> PushService:
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes([web.post("/push/{id}", self._push)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def subscribe(self, server_key: str) -> Browser:
        browser = Browser(
            f"{self.url}/push/{secrets.token_urlsafe(16)}",
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
            server_key,
        )
        self.browsers[browser.endpoint] = browser
        return browser

    def pushes_to(self, browser: Browser) -> list[dict[str, Any]]:
        return [p.message for p in self.received if p.endpoint == browser.endpoint]

    async def wait_for(self, browser: Browser, count: int) -> list[dict[str, Any]]:
        """The browser's first `count` pushes, once they came (the caller bounds the wait)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.pushes_to(browser)) >= count)
        return self.pushes_to(browser)

    async def _push(self, request: web.Request) -> web.Response:
        endpoint = f"{self.url}{request.path}"
        browser = self.browsers.get(endpoint)
        if browser is None:
            return self._refuse(404, "no such subscription")
        if browser.gone:
            return self._refuse(410, "the browser unsubscribed")
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return self._refuse(400, "TTL header missing or not a number of seconds")
        if request.headers.get("Urgency", "normal") not in URGENCIES:
            return self._refuse(400, "Urgency is not one of " + ", ".join(URGENCIES))
        try:
            claims = self._vapid(request.headers.get("Authorization", ""), browser)
        except PermissionError as exc:
            return self._refuse(403, str(exc))
        except ValueError as exc:
            return self._refuse(401, str(exc))
        body = await request.read()
        if len(body) > MAX_BODY:
            return self._refuse(413, "payload too large")
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return self._refuse(400, "Content-Encoding must be aes128gcm")
        try:
            message = json.loads(self._decrypt(body, browser))
        except (ValueError, http_ece.ECEException) as exc:
            return self._refuse(400, f"the payload does not decrypt: {exc}")
        async with self._arrived:
            self.received.append(Push(endpoint, message, int(ttl), claims))
            self._arrived.notify_all()
        return web.Response(status=201, headers={"Location": f"{self.url}/message/{secrets.token_hex(8)}"})

    def _refuse(self, status: int, why: str) -> web.Response:
        self.refused.append((status, why))
        return web.Response(status=status, text=why)

    def _vapid(self, header: str, browser: Browser) -> dict[str, Any]:
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError("Authorization is not vapid")
        parts = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        token, key = parts.get("t", ""), parts.get("k", "")
        if key != browser.server_key:
            raise PermissionError("k is not the key this subscription was made with")
        try:
            head, payload, signature = token.split(".")
            if json.loads(b64decode(head)).get("alg") != "ES256":
                raise ValueError("the JWT is not ES256")
            raw = b64decode(signature)
            if len(raw) != 64:
                raise ValueError("an ES256 signature is 64 bytes")
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64decode(key))
            der = utils.encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
            public.verify(der, f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
            claims = json.loads(b64decode(payload))
        except InvalidSignature:
            raise ValueError("the JWT's signature does not verify with k") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the JWT cannot be read: {exc}") from None
        if claims.get("aud") != self.url:
            raise ValueError(f"aud {claims.get('aud')!r} is not this service's origin {self.url}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or not time.time() < exp <= time.time() + 86400:
            raise ValueError("exp must be in the future and within 24 hours")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            raise ValueError("sub must be a mailto: or https: URL")
        return claims

    @staticmethod
    def _decrypt(body: bytes, browser: Browser) -> bytes:
        if len(body) < 21 or body[20] != 65:
            raise ValueError("the key id must be the sender's P-256 public key (65 bytes)")
        (record_size,) = struct.unpack("!L", body[16:20])
        if len(body) - 86 > record_size:
            raise ValueError("RFC 8291 allows a single record")
        return http_ece.decrypt(
            body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
        )
