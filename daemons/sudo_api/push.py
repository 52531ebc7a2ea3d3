"""Web Push: a member's browsers are told of the agent's words while no page of theirs is open.

A browser subscribes at a push service its vendor runs (RFC 8030) and hands sudo-api the
subscription: the service's endpoint URL and the browser's P-256 key and auth secret. sudo-api
encrypts each notification to that key (RFC 8291, aes128gcm) and POSTs it to the endpoint,
signed with its VAPID key (RFC 8292), which the browser was given when it subscribed.

- The VAPID key is derived from the host secret (HKDF), so it is the same at every start, is
  another on every host, and is stored nowhere; a browser's subscription stays valid as long as
  the host secret does.
- The endpoint is a URL a client wrote: sudo-api POSTs only to the push services of
  `api.push_services` (URL prefixes), so no client can make it call anything else (SSRF).
- Each member chooses what to receive (the agent's replies, its proactive messages).
- Sending runs in tasks of its own, never on a request's or the event stream's path; a push
  service's 404 or 410 means the subscription ended, which is then forgotten.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client import Counter
from py_vapid import Vapid02
from pywebpush import WebPusher

from sudo_core.config import ApiSettings
from sudo_core.db import Database

from .markdown import to_text

log = logging.getLogger("sudo-api.push")

REPLIES = "replies"
PROACTIVE = "proactive"
KINDS = (REPLIES, PROACTIVE)
"""What a member may choose to be told: the agent's replies, its messages of its own."""
SUBSCRIPTIONS_MAX = 10
"""Browsers one member may subscribe; a new one past this replaces their oldest."""
TTL_SEC = 86400
"""How long a push service keeps a notification for a browser that is offline (seconds)."""
BODY_MAX = 200
"""Characters of the agent's words in a notification (push services take about 4 KB)."""
SEND_TIMEOUT_SEC = 10.0
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PUSHES = Counter("sudo_api_push_total", "Web Push notifications sent, by outcome", ["outcome"])
"""outcome: sent (the push service took it), gone (404/410: the subscription was forgotten),
failed (any other answer, or none), refused (its endpoint is not among api.push_services)."""


class BadSubscription(ValueError):
    """A subscription sudo-api will not take; the message says why."""


def vapid_key(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The host's VAPID key: HKDF of the host secret, reduced to a P-256 scalar in [1, n-1] (48
    bytes taken, so the reduction's bias is below 2^-128)."""
    material = HKDF(hashes.SHA256(), 48, salt=None, info=b"sudo web push vapid key").derive(secret)
    return ec.derive_private_key(int.from_bytes(material) % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as the browser's pushManager.subscribe takes it (applicationServerKey): the
    uncompressed point, base64url."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


def allowed(endpoint: str, services: Sequence[str]) -> bool:
    """Whether `endpoint` lies under one of the push services' URL prefixes: the same scheme, host
    (a prefix's `*.` matches any subdomain) and port, its path under the prefix's path. No user
    name or password, which could hide the host a reader expects."""
    try:
        url = urlsplit(endpoint)
        port = url.port
    except ValueError:
        return False
    if not url.hostname or url.username is not None or url.password is not None:
        return False
    for service in services:
        prefix = urlsplit(service)
        host = prefix.hostname or ""
        if url.scheme != prefix.scheme or port != prefix.port:
            continue
        if host.startswith("*."):
            if not url.hostname.endswith(host[1:]):
                continue
        elif url.hostname != host:
            continue
        if url.path.startswith(prefix.path or "/"):
            return True
    return False


def _key(value: Any, name: str, length: int) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise BadSubscription(f"keys.{name} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadSubscription(f"keys.{name} must be a base64url string") from None
    if len(raw) != length:
        raise BadSubscription(f"keys.{name} must be {length} bytes")
    return value.rstrip("=")


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    """The browser's P-256 public key (uncompressed point), base64url."""
    auth: str
    """The browser's 16-byte auth secret, base64url."""

    @classmethod
    def parse(cls, body: dict[str, Any], services: Sequence[str]) -> Subscription:
        """A PushSubscription's JSON ({endpoint, keys: {p256dh, auth}}), checked."""
        endpoint, keys = body.get("endpoint"), body.get("keys")
        if not isinstance(endpoint, str) or len(endpoint) > 1000:
            raise BadSubscription("endpoint must be the push service's URL")
        if not allowed(endpoint, services):
            raise BadSubscription("endpoint is not at a push service this host sends to")
        if not isinstance(keys, dict):
            raise BadSubscription("keys must be an object with p256dh and auth")
        p256dh = _key(keys.get("p256dh"), "p256dh", 65)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), base64.urlsafe_b64decode(p256dh + "=" * (-len(p256dh) % 4))
            )
        except ValueError:
            raise BadSubscription("keys.p256dh is not a P-256 public key") from None
        return cls(endpoint, p256dh, _key(keys.get("auth"), "auth", 16))


@dataclass(frozen=True)
class Preferences:
    replies: bool = True
    proactive: bool = True

    def wants(self, kind: str) -> bool:
        return bool(getattr(self, kind))


class PushStore:
    """Subscriptions and preferences in SQLite; every method runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def subscribe(self, member: uuid.UUID, sub: Subscription) -> None:
        """Keep a browser's subscription for the member. An endpoint is one browser's: one that
        subscribed for someone else (a shared computer) now serves this member."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO push_subscriptions (endpoint, account_id, p256dh, auth, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(endpoint) DO UPDATE SET"
                " account_id = excluded.account_id, p256dh = excluded.p256dh, auth = excluded.auth,"
                " created_at = excluded.created_at",
                (sub.endpoint, str(member), sub.p256dh, sub.auth, time.time()),
            )
            self.db.execute(
                "DELETE FROM push_subscriptions WHERE account_id = ? AND endpoint NOT IN (SELECT endpoint"
                " FROM push_subscriptions WHERE account_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?)",
                (str(member), str(member), SUBSCRIPTIONS_MAX),
            )

    def unsubscribe(self, member: uuid.UUID, endpoint: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM push_subscriptions WHERE account_id = ? AND endpoint = ?", (str(member), endpoint)
        )
        return cur.rowcount > 0

    def forget(self, endpoint: str) -> None:
        self.db.execute("DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))

    def subscriptions(self, member: uuid.UUID | str) -> list[Subscription]:
        rows = self.db.query(
            "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE account_id = ?"
            " ORDER BY created_at, rowid",
            (str(member),),
        )
        return [Subscription(r["endpoint"], r["p256dh"], r["auth"]) for r in rows]

    def preferences(self, member: uuid.UUID | str) -> Preferences:
        row = self.db.query_one(
            "SELECT replies, proactive FROM push_preferences WHERE account_id = ?", (str(member),)
        )
        return Preferences(bool(row["replies"]), bool(row["proactive"])) if row else Preferences()

    def set_preferences(self, member: uuid.UUID, prefs: Preferences) -> None:
        self.db.execute(
            "INSERT INTO push_preferences (account_id, replies, proactive) VALUES (?, ?, ?)"
            " ON CONFLICT(account_id) DO UPDATE SET"
            " replies = excluded.replies, proactive = excluded.proactive",
            (str(member), int(prefs.replies), int(prefs.proactive)),
        )


def summary(markdown: str, limit: int = BODY_MAX) -> str:
    """The agent's Markdown as one line of plain text, cut to `limit` characters."""
    text = re.sub(r"\s+", " ", to_text(markdown)).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class Pusher:
    """Sends the notifications, each in a task of its own."""

    def __init__(self, db: Database, secret: bytes, settings: ApiSettings) -> None:
        self.store = PushStore(db)
        self.db = db
        self.settings = settings
        self.vapid = Vapid02(private_key=vapid_key(secret))
        self.public_key = public_key(self.vapid.private_key)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def notify(self, member: str, kind: str, title: str, text: str, url: str) -> None:
        """Tell the member's browsers, if they want this `kind`; returns at once."""
        task = asyncio.create_task(self._notify(member, kind, title, text, url), name=f"push-{member}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, member: str, kind: str, title: str, text: str, url: str) -> None:
        try:
            prefs = await self.db.aio(self.store.preferences, member)
            if not prefs.wants(kind):
                return
            subscriptions = await self.db.aio(self.store.subscriptions, member)
            payload = json.dumps({"title": title, "body": summary(text), "url": url}).encode()
            await asyncio.gather(*(self.send(sub, payload) for sub in subscriptions))
        except Exception:  # a task of its own: nobody else would hear of it
            PUSHES.labels("failed").inc()
            log.exception("notifying %s failed", member)

    async def send(self, sub: Subscription, payload: bytes) -> None:
        """One notification to one browser; the outcome is counted, and logged unless sent."""
        where = urlsplit(sub.endpoint).hostname
        if not allowed(sub.endpoint, self.settings.push_services):  # api.push_services changed since
            PUSHES.labels("refused").inc()
            log.warning("not sending to %s: not among api.push_services", where)
            return
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(sub.endpoint))
        claims = {"aud": origin, "sub": self.settings.push_contact, "exp": int(time.time()) + 12 * 3600}
        body = WebPusher({"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}).encode(
            payload, "aes128gcm"
        )["body"]
        headers = self.vapid.sign(claims) | {
            "TTL": str(TTL_SEC),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Urgency": "normal",
        }
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_SEC))
        try:
            # No redirect followed: the endpoint, checked above, is the one address called.
            async with self._http.post(
                sub.endpoint, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status, answer = resp.status, (await resp.content.read(200)).decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            PUSHES.labels("failed").inc()
            log.warning("push to %s failed: %s", where, str(exc) or type(exc).__name__)
            return
        if status in (200, 201, 202):
            PUSHES.labels("sent").inc()
        elif status in (404, 410):
            PUSHES.labels("gone").inc()
            log.info("the push subscription at %s ended (%d): forgotten", where, status)
            await self.db.aio(self.store.forget, sub.endpoint)
        else:
            PUSHES.labels("failed").inc()
            log.warning("push to %s refused: %d %s", where, status, answer)

    async def stop(self) -> None:
        """Let the notifications under way finish (they are bounded by SEND_TIMEOUT_SEC)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), SEND_TIMEOUT_SEC + 1)
        if self._http is not None:
            await self._http.close()
