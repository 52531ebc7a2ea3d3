"""Accounts, login sessions and the login rate limit.

A family signs up with an email and password: that creates the family and its first account.
Passwords are hashed with argon2id. A session is a random token held in an HttpOnly cookie
(or sent as a bearer token by API clients); only its SHA-256 is stored, next to the session's
CSRF token, so a stolen database opens no session.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass

import argon2
import argon2.exceptions

from sudo_core.db import Database

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,63}$")
PASSWORD_MIN = 10
NAME_MAX = 80
_hasher = argon2.PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


class InvalidInput(ValueError):
    """Bad sign-up or login input; the message is meant for the person typing."""


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    email: str
    display_name: str
    family_id: uuid.UUID | None
    is_admin: bool


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clean_name(value: str, what: str) -> str:
    value = " ".join(value.split())
    if not 1 <= len(value) <= NAME_MAX:
        raise InvalidInput(f"{what} must be 1 to {NAME_MAX} characters")
    return value


def clean_email(value: str) -> str:
    value = value.strip()
    if not EMAIL.match(value):
        raise InvalidInput("enter a valid email address")
    return value


class Accounts:
    """Account and session storage; the synchronous methods run on the database thread."""

    def __init__(self, db: Database, session_days: float) -> None:
        self.db = db
        self.session_sec = session_days * 86400
        self._hashing = asyncio.Semaphore(2)
        """argon2id takes 64 MiB a hash: a burst of sign-ups and logins hashes two at a time,
        not one per thread of the pool, so sudo-api's memory does not follow the burst."""

    # Sign-up and login (async: hashing runs off both the event loop and the database thread)

    async def sign_up(
        self, email: str, password: str, display_name: str, family_name: str | None, is_admin: bool = False
    ) -> Account:
        email = clean_email(email)
        display_name = clean_name(display_name, "your name")
        family_name = clean_name(family_name, "the family name") if family_name is not None else None
        if len(password) < PASSWORD_MIN or len(password) > 1024:
            raise InvalidInput(f"the password must be at least {PASSWORD_MIN} characters")
        async with self._hashing:
            hashed = await asyncio.to_thread(_hasher.hash, password)
        return await self.db.aio(self._create, email, hashed, display_name, family_name, is_admin)

    def _create(
        self, email: str, hashed: str, display_name: str, family_name: str | None, is_admin: bool
    ) -> Account:
        account_id = uuid.uuid4()
        with self.db.transaction():
            if self.db.query_one("SELECT 1 FROM accounts WHERE email = ?", (email,)):
                raise InvalidInput("an account with this email already exists")
            family_id = self.db.create_family(family_name).id if family_name else None
            self.db.execute(
                "INSERT INTO accounts (id, email, password_hash, display_name, family_id, is_admin,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    str(account_id),
                    email,
                    hashed,
                    display_name,
                    str(family_id) if family_id else None,
                    int(is_admin),
                    time.time(),
                ),
            )
        return Account(account_id, email, display_name, family_id, is_admin)

    async def check_password(self, email: str, password: str) -> Account | None:
        row = await self.db.aio(self.db.query_one, "SELECT * FROM accounts WHERE email = ?", (email.strip(),))
        # Hash even for an unknown email, so timing does not tell which emails have accounts.
        stored = row["password_hash"] if row else _DUMMY_HASH
        try:
            async with self._hashing:
                await asyncio.to_thread(_hasher.verify, stored, password[:1024])
        except argon2.exceptions.VerificationError:
            return None
        return _account(row) if row else None

    def has_admin(self) -> bool:
        return self.db.query_one("SELECT 1 FROM accounts WHERE is_admin = 1") is not None

    # Sessions

    def open_session(self, account_id: uuid.UUID) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        self.db.execute(
            "INSERT INTO sessions (token_hash, account_id, csrf, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash(token), str(account_id), secrets.token_urlsafe(24), now, now + self.session_sec),
        )
        return token

    def session(self, token: str) -> Session | None:
        row = self.db.query_one(
            "SELECT a.*, s.csrf FROM sessions s JOIN accounts a ON a.id = s.account_id"
            " WHERE s.token_hash = ? AND s.expires_at > ?",
            (token_hash(token), time.time()),
        )
        return Session(_account(row), row["csrf"]) if row else None

    def close_session(self, token: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

    def members(self, family_id: uuid.UUID) -> list[Account]:
        rows = self.db.query(
            "SELECT * FROM accounts WHERE family_id = ? ORDER BY created_at", (str(family_id),)
        )
        return [_account(r) for r in rows]


def _account(row) -> Account:
    family = row["family_id"]
    return Account(
        uuid.UUID(row["id"]),
        row["email"],
        row["display_name"],
        uuid.UUID(family) if family else None,
        bool(row["is_admin"]),
    )


class Limiter:
    """Events (failed guesses, codes sent) in a sliding window, counted per key of each kind.

    `Limiter(300, account=5, address=50)` allows 5 events per account and 50 per address in any
    300 s. In memory: a restart forgives, which costs an attacker a restart per few tries. Keys
    whose events the window forgot are dropped, so guessing at new keys takes no lasting memory.
    """

    def __init__(self, window_sec: float, **limits: int) -> None:
        self.limits = limits
        self.window = window_sec
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._sweep_at = 1024

    def retry_after(self, **keys: str) -> float:
        """Seconds until one more event is allowed for all of these keys; 0 when it is now."""
        now = time.monotonic()
        wait = 0.0
        for kind, key in keys.items():
            events = self._fresh((kind, key), now)
            if events is not None and len(events) >= self.limits[kind]:
                wait = max(wait, events[0] + self.window - now)
        return wait

    def count(self, **keys: str) -> None:
        now = time.monotonic()
        for kind, key in keys.items():
            self._events.setdefault((kind, key), deque(maxlen=self.limits[kind])).append(now)
        if len(self._events) >= self._sweep_at:
            for k in list(self._events):
                self._fresh(k, now)
            self._sweep_at = max(1024, 2 * len(self._events))

    def forget(self, kind: str, key: str) -> None:
        self._events.pop((kind, key), None)

    def _fresh(self, key: tuple[str, str], now: float) -> deque[float] | None:
        events = self._events.get(key)
        while events and events[0] <= now - self.window:
            events.popleft()
        if events is not None and not events:
            del self._events[key]
            return None
        return events


class LoginLimiter:
    """Failed logins in a sliding window, counted per account and per client address."""

    def __init__(self, per_account: int, per_address: int, window_sec: float) -> None:
        self._limiter = Limiter(window_sec, account=per_account, address=per_address)

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until a login may be tried; 0 when it may be tried now."""
        return self._limiter.retry_after(account=account.lower(), address=address)

    def failed(self, account: str, address: str) -> None:
        self._limiter.count(account=account.lower(), address=address)

    def succeeded(self, account: str) -> None:
        """The account's count starts over; the address's does not (one known password must not
        reset the count of guesses at everyone else's)."""
        self._limiter.forget("account", account.lower())
