"""Accounts and their lifecycle: sign-up, login, sessions, passwords, profiles, reset links.

A family signs up with an email and password: that creates the family and its owner. Other
members join by invitation, or (children) are added by a parent with a username (`members`).
Passwords are hashed with argon2id. A session is a random token held in an HttpOnly cookie (or
sent as a bearer token by API clients); only its SHA-256 is stored, next to the session's CSRF
token, so a stolen database opens no session. Reset links work the same way.

Each use case lives here once and raises an `AccountError`; sudo-api's pages and /v1 and
`sudoctl` translate those into what their caller reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import argon2
import argon2.exceptions

from sudo_core.db import Database

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,63}$")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
PASSWORD_MIN = 10
PASSWORD_MAX = 1024
NAME_MAX = 80
RESET_TTL_SEC = 3600
CODE_TTL_SEC = 600
"""A reset code sent over WhatsApp is valid ten minutes."""
SEEN_EVERY_SEC = 60.0
"""A session's last use is written at most this often: a request is not a database write."""

OWNER, ADULT, CHILD = "owner", "adult", "child"
ROLES = (OWNER, ADULT, CHILD)

_hasher = argon2.PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


class AccountError(Exception):
    """What a member asked cannot be done; the message is meant for them."""


class InvalidInput(AccountError):
    """Bad input (400)."""


class NotAllowed(AccountError):
    """The caller's role does not allow it (403)."""


class FamilyDisabled(NotAllowed):
    def __init__(self) -> None:
        super().__init__("this family is disabled: ask the host's admin")


class NotFound(AccountError):
    """No such member, invitation or link, or not one the caller may see (404)."""


class Conflict(AccountError):
    """Taken already: an email, a username (409)."""


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    email: str | None
    username: str | None
    display_name: str
    family_id: uuid.UUID | None
    role: str | None
    """owner, adult or child; None for the host's admin, who belongs to no family."""
    is_admin: bool
    family_disabled: bool = False

    @property
    def login(self) -> str:
        return self.email or self.username or ""

    @property
    def is_parent(self) -> bool:
        """Owners and adults run the family: invite, pair devices, link numbers, settings."""
        return self.role in (OWNER, ADULT)


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str
    token_hash: str


@dataclass(frozen=True)
class SessionInfo:
    """One of an account's sessions, as its owner sees them (never the token)."""

    id: str
    created_at: float
    last_seen_at: float
    user_agent: str
    address: str
    current: bool


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


def clean_username(value: str) -> str:
    value = value.strip().lower()
    if not USERNAME.match(value):
        raise InvalidInput("a username is 2 to 32 lowercase letters, digits, dots, dashes or underscores")
    return value


def check_password_rules(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise InvalidInput(f"the password must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f"the password must be at most {PASSWORD_MAX} characters")


def speaker_label(name: str, role: str | None) -> str:
    """How the agent is told who speaks: the member's name, then the role Sudo vouches for in
    brackets, last (brackets are taken out of the name, so no name can fake a role)."""
    name = " ".join(name.replace("[", "(").replace("]", ")").split())
    return f"{name} [{'child' if role == CHILD else 'adult'}]"


def code_token(account_id: uuid.UUID, code: str) -> str:
    """What a WhatsApp reset code stands for: a reset token bound to its account (a code alone is
    six digits, shared by many accounts)."""
    return f"{account_id}:{code.strip()}"


ACCOUNT_COLUMNS = "a.*, f.disabled_at AS family_disabled_at"
ACCOUNT_FROM = "accounts a LEFT JOIN families f ON f.id = a.family_id"


def account_of(row) -> Account:
    family = row["family_id"]
    return Account(
        uuid.UUID(row["id"]),
        row["email"],
        row["username"],
        row["display_name"],
        uuid.UUID(family) if family else None,
        row["role"],
        bool(row["is_admin"]),
        row["family_disabled_at"] is not None,
    )


class Accounts:
    """Account, session and reset-link storage; the synchronous methods run on the database thread."""

    def __init__(self, db: Database, session_days: float, signup: str = "open") -> None:
        self.db = db
        self.session_sec = session_days * 86400
        self.signup = signup
        """api.signup: who may create a family (open, invite, closed)."""
        self._hashing = asyncio.Semaphore(2)
        """argon2id takes 64 MiB a hash: a burst of sign-ups and logins hashes two at a time,
        not one per thread of the pool, so sudo-api's memory does not follow the burst."""

    async def hash_password(self, password: str) -> str:
        """Checked against the rules, then hashed off both the event loop and the database thread."""
        check_password_rules(password)
        async with self._hashing:
            return await asyncio.to_thread(_hasher.hash, password)

    async def verify_password(self, stored: str | None, password: str) -> bool:
        try:
            async with self._hashing:
                # Hash even with nothing stored, so timing does not tell which logins exist.
                await asyncio.to_thread(_hasher.verify, stored or _DUMMY_HASH, password[:PASSWORD_MAX])
        except argon2.exceptions.VerificationError:
            return False
        return stored is not None

    # Sign-up and login

    async def sign_up(
        self, email: str, password: str, display_name: str, family_name: str | None, is_admin: bool = False
    ) -> Account:
        """A new family with its owner (if sign-up is open), or (no family name) the host's admin."""
        if family_name is not None and self.signup != "open":
            raise NotAllowed(
                "new families join this host by invitation: ask its admin for a link"
                if self.signup == "invite"
                else "this host takes no new families"
            )
        email = clean_email(email)
        display_name = clean_name(display_name, "your name")
        family_name = clean_name(family_name, "the family name") if family_name is not None else None
        hashed = await self.hash_password(password)
        return await self.db.aio(self._create_signup, email, hashed, display_name, family_name, is_admin)

    def _create_signup(
        self, email: str, hashed: str, display_name: str, family_name: str | None, is_admin: bool
    ) -> Account:
        with self.db.transaction():
            family_id = self.db.create_family(family_name).id if family_name else None
            return self.create(
                hashed, display_name, family_id, OWNER if family_id else None, email=email, is_admin=is_admin
            )

    def create(
        self,
        hashed: str,
        display_name: str,
        family_id: uuid.UUID | None,
        role: str | None,
        *,
        email: str | None = None,
        username: str | None = None,
        is_admin: bool = False,
    ) -> Account:
        """Insert an account (inside the caller's transaction); a taken email or username is a Conflict."""
        if email and self.db.query_one("SELECT 1 FROM accounts WHERE email = ?", (email,)):
            raise Conflict("an account with this email already exists")
        if username and self.db.query_one("SELECT 1 FROM accounts WHERE username = ?", (username,)):
            raise Conflict("this username is taken: choose another")
        account_id = uuid.uuid4()
        self.db.execute(
            "INSERT INTO accounts (id, email, username, password_hash, display_name, family_id, role,"
            " is_admin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(account_id),
                email,
                username,
                hashed,
                display_name,
                str(family_id) if family_id else None,
                role,
                int(is_admin),
                time.time(),
            ),
        )
        return Account(account_id, email, username, display_name, family_id, role, is_admin)

    async def check_password(self, login: str, password: str) -> Account | None:
        """The account whose email or username is `login`, if the password is right."""
        row = await self.db.aio(
            self.db.query_one,
            f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.email = ? OR a.username = ?",
            (login.strip(), login.strip().lower()),
        )
        ok = await self.verify_password(row["password_hash"] if row else None, password)
        return account_of(row) if ok and row else None

    def by_login(self, login: str) -> Account | None:
        """The account whose email or username is `login` (what the admin types to reset it)."""
        row = self.db.query_one(
            f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.email = ? OR a.username = ?",
            (login.strip(), login.strip().lower()),
        )
        return account_of(row) if row else None

    def has_admin(self) -> bool:
        return self.db.query_one("SELECT 1 FROM accounts WHERE is_admin = 1") is not None

    def get(self, account_id: uuid.UUID) -> Account | None:
        row = self.db.query_one(
            f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.id = ?", (str(account_id),)
        )
        return account_of(row) if row else None

    # Sessions

    def open_session(self, account_id: uuid.UUID, user_agent: str = "", address: str = "") -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        self.db.execute(
            "INSERT INTO sessions (token_hash, account_id, csrf, created_at, expires_at, last_seen_at,"
            " user_agent, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token_hash(token),
                str(account_id),
                secrets.token_urlsafe(24),
                now,
                now + self.session_sec,
                now,
                user_agent[:200],
                address[:64],
            ),
        )
        return token

    def session(self, token: str) -> Session | None:
        hashed, now = token_hash(token), time.time()
        row = self.db.query_one(
            f"SELECT {ACCOUNT_COLUMNS}, s.csrf, s.last_seen_at FROM sessions s JOIN {ACCOUNT_FROM}"
            " WHERE a.id = s.account_id AND s.token_hash = ? AND s.expires_at > ?",
            (hashed, now),
        )
        if row is None:
            return None
        if now - (row["last_seen_at"] or 0) > SEEN_EVERY_SEC:
            self.db.execute("UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?", (now, hashed))
        return Session(account_of(row), row["csrf"], hashed)

    def close_session(self, token: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

    def sessions_of(self, session: Session) -> list[SessionInfo]:
        rows = self.db.query(
            "SELECT * FROM sessions WHERE account_id = ? AND expires_at > ? ORDER BY last_seen_at DESC",
            (str(session.account.id), time.time()),
        )
        return [
            SessionInfo(
                r["token_hash"][:16],
                r["created_at"],
                r["last_seen_at"] or r["created_at"],
                r["user_agent"] or "",
                r["address"] or "",
                r["token_hash"] == session.token_hash,
            )
            for r in rows
        ]

    def close_sessions(self, session: Session, session_id: str | None = None) -> int:
        """Log out the account's other sessions, or the one whose listed id is `session_id`."""
        if session_id is None:
            cur = self.db.execute(
                "DELETE FROM sessions WHERE account_id = ? AND token_hash != ?",
                (str(session.account.id), session.token_hash),
            )
            return cur.rowcount
        if not re.fullmatch(r"[0-9a-f]{16}", session_id):
            raise NotFound("no session of yours with this id")
        cur = self.db.execute(
            "DELETE FROM sessions WHERE account_id = ? AND substr(token_hash, 1, 16) = ?",
            (str(session.account.id), session_id),
        )
        if not cur.rowcount:
            raise NotFound("no session of yours with this id")
        return cur.rowcount

    # Profile and password

    async def change_password(self, session: Session, current: str, new: str) -> None:
        """The current password is required; every other session of the account ends."""
        row = await self.db.aio(
            self.db.query_one, "SELECT password_hash FROM accounts WHERE id = ?", (str(session.account.id),)
        )
        if not await self.verify_password(row["password_hash"] if row else None, current):
            raise InvalidInput("the current password is wrong")
        hashed = await self.hash_password(new)

        def change() -> None:
            with self.db.transaction():
                self._set_password(session.account.id, hashed, session.token_hash)

        await self.db.aio(change)

    def _set_password(self, account_id: uuid.UUID, hashed: str, keep: str | None) -> None:
        """Inside the caller's transaction: every session but `keep` ends."""
        self.db.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", (hashed, str(account_id)))
        self.db.execute(
            "DELETE FROM sessions WHERE account_id = ? AND token_hash != ?", (str(account_id), keep or "")
        )

    def update_profile(self, account: Account, name: str | None, email: str | None) -> Account:
        """A new display name and/or email; a child, who logs in by username, may add an email."""
        with self.db.transaction():
            if name is not None:
                self.db.execute(
                    "UPDATE accounts SET display_name = ? WHERE id = ?",
                    (clean_name(name, "your name"), str(account.id)),
                )
            if email is not None:
                email = clean_email(email)
                taken = self.db.query_one("SELECT id FROM accounts WHERE email = ?", (email,))
                if taken and taken["id"] != str(account.id):
                    raise Conflict("an account with this email already exists")
                self.db.execute("UPDATE accounts SET email = ? WHERE id = ?", (email, str(account.id)))
        updated = self.get(account.id)
        assert updated is not None
        return updated

    # Reset links: single use, valid an hour

    def issue_reset(self, account_id: uuid.UUID, issued_by: uuid.UUID | None) -> str:
        """A one-time token to set a new password; `issued_by` None is the host's admin."""
        token = secrets.token_urlsafe(32)
        self._store_reset(token, account_id, str(issued_by) if issued_by else None, RESET_TTL_SEC)
        return token

    def issue_code(self, account_id: uuid.UUID) -> str:
        """A six-digit reset code to send to the account's WhatsApp number; it replaces any
        earlier code. Use it with `code_token`."""
        code = f"{secrets.randbelow(10**6):06d}"
        self.db.execute(
            "DELETE FROM password_resets WHERE account_id = ? AND issued_by = 'whatsapp'", (str(account_id),)
        )
        self._store_reset(code_token(account_id, code), account_id, "whatsapp", CODE_TTL_SEC)
        return code

    def _store_reset(self, token: str, account_id: uuid.UUID, issued_by: str | None, ttl: float) -> None:
        now = time.time()
        self.db.execute("DELETE FROM password_resets WHERE expires_at < ?", (now,))
        self.db.execute(
            "INSERT INTO password_resets (token_hash, account_id, issued_by, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash(token), str(account_id), issued_by, now, now + ttl),
        )

    def reset_target(self, token: str) -> Account:
        """Whose password a reset link sets, while it is valid."""
        row = self.db.query_one(
            "SELECT account_id FROM password_resets WHERE token_hash = ? AND expires_at > ?"
            " AND used_at IS NULL",
            (token_hash(token), time.time()),
        )
        account = self.get(uuid.UUID(row["account_id"])) if row else None
        if account is None:
            raise NotFound("this reset link is used, expired or unknown: ask for a new one")
        return account

    async def reset_password(self, token: str, new: str) -> Account:
        """Set the password from a reset link, which is then used up; every session of the account ends."""
        await self.db.aio(self.reset_target, token)
        hashed = await self.hash_password(new)
        return await self.db.aio(self._use_reset, token, hashed)

    def _use_reset(self, token: str, hashed: str) -> Account:
        with self.db.transaction():
            row = self.db.query_one(
                "SELECT account_id FROM password_resets WHERE token_hash = ? AND expires_at > ?"
                " AND used_at IS NULL",
                (token_hash(token), time.time()),
            )
            if row is None:  # used by a concurrent request meanwhile
                raise NotFound("this reset link is used, expired or unknown: ask for a new one")
            self.db.execute(
                "UPDATE password_resets SET used_at = ? WHERE token_hash = ?",
                (time.time(), token_hash(token)),
            )
            self._set_password(uuid.UUID(row["account_id"]), hashed, None)
        account = self.get(uuid.UUID(row["account_id"]))
        assert account is not None
        return account
