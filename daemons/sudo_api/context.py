"""What every request handler reaches: the services, the caller's session, errors as JSON."""

from __future__ import annotations

import asyncio
import hmac
import secrets
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import web

from sudo_core.accounts import (
    Account,
    AccountError,
    Accounts,
    Conflict,
    FamilyDisabled,
    InvalidInput,
    NotAllowed,
    NotFound,
    Session,
)
from sudo_core.config import ApiSettings, Settings
from sudo_core.db import Database
from sudo_core.members import Members
from sudo_core.provisioner_client import ProvisionerClient
from sudo_core.twilio import TwilioError, TwilioNotConfigured

from .chat import Conversations
from .devices import Devices, PairingError
from .fleet import FleetRestart, ImageChange
from .limits import Limiter, LoginLimiter, RateLimited, StorageFull
from .login import WrongPassword
from .membership import AgentUnreachable
from .numbers import NumberError, Numbers
from .push import Pusher
from .whatsapp import WhatsApp, is_trusted

SESSION_COOKIE = "sudo_session"
RESET_CODE_GUESSES = 5
"""Wrong password reset codes allowed per number within api.whatsapp_code_window_sec."""


@dataclass
class Services:
    settings: Settings
    db: Database
    provisioner: ProvisionerClient
    accounts: Accounts
    limiter: LoginLimiter
    chat: Conversations
    devices: Devices
    fleet: FleetRestart
    numbers: Numbers
    whatsapp: WhatsApp
    push: Pusher
    secret: bytes
    service_token: str
    """What the voice bridge presents to the service endpoints (a credential, read at start)."""
    pairing: Limiter = field(default_factory=lambda: pairing_limiter(ApiSettings()))
    """Wrong pairing codes per family and per address, pairings started per address."""
    codes: Limiter = field(default_factory=lambda: code_limiter(ApiSettings()))
    """WhatsApp codes (to link a number, to reset a password) sent per number, and wrong reset
    codes typed per number."""
    setup_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    """What /setup asks for while the host has no admin: new at every start, printed then."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    members: Members = field(init=False)
    image: ImageChange = field(init=False)
    """An image upgrade or rollback started from /admin."""

    def __post_init__(self) -> None:
        self.members = Members(self.accounts)
        self.image = ImageChange(self.provisioner)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run without waiting, keeping a reference so the task is not collected midway."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def pairing_limiter(api: ApiSettings) -> Limiter:
    return Limiter(
        api.pairing_window_sec,
        family=api.pairing_attempts,
        address=api.pairing_attempts_per_address,
        host=api.pairing_attempts_per_host,
        start=api.pairing_starts_per_address,
    )


def code_limiter(api: ApiSettings) -> Limiter:
    return Limiter(
        api.whatsapp_code_window_sec, number=api.whatsapp_codes_per_number, guess=RESET_CODE_GUESSES
    )


SERVICES = web.AppKey("services", Services)
CALLER = web.RequestKey("caller", tuple)
"""The caller's session (or None) and whether it came in a cookie, once looked up."""


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


class ApiError(web.HTTPException):
    """An error answered as {"error": message} with the given status."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        self.status_code = status
        self.message = message
        super().__init__(
            text=web.json_response({"error": message, **extra}).text, content_type="application/json"
        )


def fail(status: int, message: str, **extra: Any) -> NoReturn:
    raise ApiError(status, message, **extra)


def bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme == "Bearer" and token.strip() else None


async def load_session(request: web.Request) -> Session | None:
    """The caller's session from its cookie or bearer token; cached on the request."""
    if CALLER not in request:
        token = request.cookies.get(SESSION_COOKIE) or bearer(request)
        svc = services(request)
        session = await svc.db.aio(svc.accounts.session, token) if token else None
        request[CALLER] = (session, bool(request.cookies.get(SESSION_COOKIE)))
    return request[CALLER][0]


async def require_session(request: web.Request) -> Session:
    session = await load_session(request)
    if session is None:
        fail(401, "log in first")
    by_cookie = request[CALLER][1]
    if request.method not in ("GET", "HEAD", "OPTIONS") and by_cookie:
        check_csrf(request, session, request.headers.get("X-CSRF-Token", ""))
    return session


async def require_family(request: web.Request, *, parent: bool = False) -> tuple[Session, uuid.UUID]:
    """A member of an enabled family; `parent`: its owner or an adult (not a child)."""
    session = await require_session(request)
    if session.account.family_id is None:
        fail(403, "this account belongs to no family")
    if session.account.family_disabled:
        raise FamilyDisabled()
    if parent and not session.account.is_parent:
        fail(403, "only the family's parents (its owner and adults) can do this")
    return session, session.account.family_id


STATUS_OF: dict[type[Exception], int] = {
    InvalidInput: 400,
    NumberError: 400,
    PairingError: 400,
    WrongPassword: 401,
    NotAllowed: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    TwilioNotConfigured: 503,
    TwilioError: 502,
    AgentUnreachable: 502,
    StorageFull: 507,
}
"""A subclass before its base: the first kind an error is decides."""

REFUSALS: tuple[type[Exception], ...] = (AccountError, *STATUS_OF)
"""The errors a use case refuses with: a front end says them as they are, with their status."""


def status_of(error: Exception) -> int:
    """The HTTP status of a domain error, for /v1 and the pages alike: 400 for one not listed
    (another AccountError)."""
    return next((code for kind, code in STATUS_OF.items() if isinstance(error, kind)), 400)


async def require_admin(request: web.Request) -> Session:
    session = await require_session(request)
    if not session.account.is_admin:
        fail(403, "admins only")
    return session


def check_csrf(request: web.Request, session: Session, token: str) -> None:
    """A cookie is sent by the browser on its own, so a state change must also prove it came from our page."""
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        fail(403, "missing or wrong CSRF token: reload the page and try again")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError, LookupError):  # nested too deep; a charset Python lacks
        fail(400, "the body must be JSON")
    if not isinstance(body, dict):
        fail(400, "the body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, max_len: int = 200) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        fail(400, f"{name} is required (a non-empty string)")
    if len(value) > max_len:
        fail(400, f"{name} must be at most {max_len} characters")
    return value.strip()


def new_session(request: web.Request, account: Account) -> Any:
    """Open a session for the account, noting the client for the account's list of sessions."""
    svc = services(request)
    agent = request.headers.get("User-Agent", "")
    return svc.db.aio(svc.accounts.open_session, account.id, agent, client_address(request))


def client_address(request: web.Request) -> str:
    """The client's address for the rate limits. Behind a trusted proxy (Caddy) every request
    comes from the proxy: then it is the last hop of X-Forwarded-For that no trusted proxy is,
    since each proxy appends the peer it saw (what the client itself wrote comes before)."""
    trusted = services(request).settings.api.trusted_proxies
    address = request.remote or "unknown"
    if is_trusted(address, trusted):
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            if hop.strip():
                address = hop.strip()
                if not is_trusted(address, trusted):
                    break
    return address


def public_base(request: web.Request) -> str:
    """This site's address as the caller reached it, for links to hand to someone else."""
    return f"{request.headers.get('X-Forwarded-Proto', request.scheme)}://{request.host}"
