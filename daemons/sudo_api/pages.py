"""The website: server-rendered pages with plain forms, a little JavaScript for live chat.

Every form carries the session's CSRF token; the pages' scripts send it as X-CSRF-Token to /v1.
Without JavaScript the chat still works: the form posts, the page reloads with the reply
once it is there.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from aiohttp import web

from sudo_core import host_settings
from sudo_core.accounts import AccountError, FamilyDisabled, InvalidInput, NotAllowed, Session

from .api import attempt_login, complete_pairing, fleet_view, link_number
from .chat import MESSAGE_MAX, ChatUnavailable
from .context import SESSION_COOKIE, ApiError, check_csrf, load_session, services
from .devices import PairingError
from .numbers import NumberError

log = logging.getLogger("sudo-api.pages")

HERE = Path(__file__).parent
HISTORY_ON_PAGE = 200
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["clock"] = lambda t: time.strftime("%H:%M", time.localtime(t)) if t else ""
templates.filters["mib"] = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"


def render(name: str, session: Session | None, status: int = 200, **values: Any) -> web.Response:
    html = templates.get_template(name).render(session=session, **values)
    return web.Response(text=html, content_type="text/html", status=status)


async def page_session(request: web.Request, *, family: bool = True, admin: bool = False) -> Session:
    """The logged-in session for a page, or a redirect to the login page."""
    session = await load_session(request)
    if session is None:
        raise web.HTTPSeeOther(f"/login?next={request.path}")
    if admin and not session.account.is_admin:
        raise web.HTTPForbidden(text="admins only")
    if family and session.account.family_id is None:
        raise web.HTTPSeeOther("/admin")
    if family and session.account.family_disabled:
        raise FamilyDisabled()
    return session


async def form(request: web.Request, session: Session | None = None) -> dict[str, str]:
    try:
        posted = await request.post()
    except (ValueError, LookupError):  # not decodable, or in a charset Python lacks
        raise web.HTTPBadRequest(text="the form could not be read") from None
    data = {k: v for k, v in posted.items() if isinstance(v, str)}
    if session is not None:
        check_csrf(request, session, data.get("csrf", ""))
    return data


def start_session(request: web.Request, token: str, to: str) -> NoReturn:
    response = web.HTTPSeeOther(to)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(services(request).accounts.session_sec),
        httponly=True,
        secure=services(request).settings.api.secure_cookies,
        samesite="Lax",
        path="/",
    )
    raise response


def safe_next(value: str | None) -> str:
    return value if value and value.startswith("/") and not value.startswith("//") else "/chat"


async def index(request: web.Request) -> web.Response:
    session = await load_session(request)
    raise web.HTTPSeeOther("/chat" if session else "/login")


async def signup(request: web.Request) -> web.Response:
    svc = services(request)
    if request.method == "GET":
        return render("signup.html", None, values={}, error=None)
    data = await form(request)
    try:
        account = await svc.accounts.sign_up(
            data.get("email", ""), data.get("password", ""), data.get("name", ""), data.get("family_name", "")
        )
    except InvalidInput as exc:
        return render("signup.html", None, status=400, values=data, error=str(exc))
    token = await svc.db.aio(svc.accounts.open_session, account.id)
    start_session(request, token, "/chat")


async def login(request: web.Request) -> web.Response:
    svc = services(request)
    if request.method == "GET":
        if not await svc.db.aio(svc.accounts.has_admin):
            raise web.HTTPSeeOther("/setup")
        return render("login.html", None, email="", error=None, next=request.query.get("next", ""))
    data = await form(request)
    email = data.get("email", "")
    try:
        account = await attempt_login(request, email, data.get("password", ""))
    except web.HTTPTooManyRequests as exc:
        error = f"too many failed logins: try again in {exc.headers['Retry-After']} s"
        return render("login.html", None, status=429, email=email, error=error, next=data.get("next", ""))
    except ApiError:
        return render(
            "login.html",
            None,
            status=401,
            email=email,
            error="wrong email or password",
            next=data.get("next", ""),
        )
    token = await svc.db.aio(svc.accounts.open_session, account.id)
    start_session(request, token, safe_next(data.get("next")) if account.family_id else "/admin")


async def logout(request: web.Request) -> web.Response:
    session = await page_session(request, family=False)
    await form(request, session)
    svc = services(request)
    await svc.db.aio(svc.accounts.close_session, request.cookies.get(SESSION_COOKIE, ""))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def setup(request: web.Request) -> web.Response:
    """First run: the first visitor creates the admin; afterwards this page is gone."""
    svc = services(request)
    if await svc.db.aio(svc.accounts.has_admin):
        raise web.HTTPNotFound()
    if request.method == "GET":
        return render("setup.html", None, values={}, error=None)
    data = await form(request)
    try:
        account = await svc.accounts.sign_up(
            data.get("email", ""), data.get("password", ""), data.get("name", ""), None, is_admin=True
        )
    except InvalidInput as exc:
        return render("setup.html", None, status=400, values=data, error=str(exc))
    token = await svc.db.aio(svc.accounts.open_session, account.id)
    start_session(request, token, "/admin")


async def chat(request: web.Request) -> web.Response:
    session = await page_session(request)
    svc = services(request)
    family = session.account.family_id
    assert family is not None
    error = None
    if request.method == "POST":
        data = await form(request, session)
        text = data.get("text", "").strip()
        if not text or len(text) > MESSAGE_MAX:
            error = f"a message is 1 to {MESSAGE_MAX} characters"
        else:
            try:
                await svc.chat.send(family, session.account.id, text, session.account.display_name)
            except ChatUnavailable as exc:
                error = str(exc)
            else:
                raise web.HTTPSeeOther("/chat")
    messages = await svc.db.aio(svc.chat.store.history, family, session.account.id, None, HISTORY_ON_PAGE + 1)
    more = len(messages) > HISTORY_ON_PAGE
    return render(
        "chat.html",
        session,
        status=400 if error else 200,
        messages=messages[-HISTORY_ON_PAGE:],
        more=more,
        error=error,
        family_name=await svc.db.aio(lambda: svc.db.get_family(family).name),  # type: ignore[union-attr]
    )


async def integrations(request: web.Request) -> web.Response:
    session = await page_session(request)
    svc = services(request)
    family = session.account.family_id
    assert family is not None
    # Opening this page means the family is about to use its agent: wake it now, in the background.
    svc.background(_wake(svc, family))
    message = error = None
    if request.method == "POST":
        data = await form(request, session)
        try:
            if data.get("action") in ("pair", "revoke") and not session.account.is_parent:
                raise NotAllowed(
                    "only the family's parents (its owner and adults) can pair or revoke devices"
                )
            if data.get("action") == "pair":
                device = await complete_pairing(request, family, data.get("code", ""))
                message = f"{device.name} is paired."
            elif data.get("action") == "revoke":
                if not await svc.devices.revoke(family, uuid.UUID(data.get("device_id", ""))):
                    error = "no such device"
                else:
                    message = "Device revoked."
            elif data.get("action") == "add-number":
                record = await link_number(svc, family, session.account.id, data.get("number", ""))
                message = f"A code was sent to {record.number} on WhatsApp: enter it below."
            elif data.get("action") == "verify-number":
                record = await svc.db.aio(
                    svc.numbers.verify,
                    family,
                    session.account.id,
                    data.get("number_id", ""),
                    data.get("code", ""),
                )
                message = f"{record.number} is linked."
            elif data.get("action") == "remove-number":
                owner = None if session.account.is_parent else session.account.id
                await svc.db.aio(svc.numbers.remove, family, data.get("number_id", ""), owner)
                message = "Number removed."
        except (PairingError, NumberError, AccountError) as exc:
            error = str(exc)
        except ApiError as exc:
            error = exc.message
        except (ValueError, LookupError):
            error = "no such device or number"
    devices = await svc.db.aio(svc.devices.list, family)
    return render(
        "integrations.html",
        session,
        status=400 if error else 200,
        devices=[(d, svc.devices.online(d)) for d in devices],
        numbers=await svc.db.aio(svc.numbers.list, family),
        message=message,
        error=error,
    )


async def admin_home(request: web.Request) -> web.Response:
    session = await page_session(request, family=False, admin=True)
    view = await fleet_view(services(request))
    return render("admin.html", session, error=None, **view)


async def admin_settings(request: web.Request) -> web.Response:
    session = await page_session(request, family=False, admin=True)
    svc = services(request)
    error = message = None
    if request.method == "POST":
        data = await form(request, session)
        if data.get("action") == "restart-all":
            started = svc.fleet.start("requested by an admin")
            message = "Restarting every runtime." if started else "A restart is already running."
        else:
            try:
                clean = host_settings.validate({k: v for k, v in data.items() if k in host_settings.FIELDS})
                changed = await svc.db.aio(host_settings.store, svc.db, clean)
            except host_settings.InvalidSetting as exc:
                error = str(exc)
            else:
                message = "Saved." if changed else "Nothing changed."
                if any(host_settings.FIELDS[k].restart for k in changed) and svc.fleet.start(
                    "settings changed"
                ):
                    message += " The model changed: every runtime is being recreated."
    return render(
        "admin_settings.html",
        session,
        status=400 if error else 200,
        fields=host_settings.FIELDS,
        values=await svc.db.aio(host_settings.current, svc.db),
        progress=svc.fleet.progress,
        message=message,
        error=error,
    )


async def _wake(svc: Any, family: uuid.UUID) -> None:
    try:
        await svc.provisioner.ensure(family)
    except Exception as exc:
        log.warning("waking the assistant of %s from /integrations failed: %s", family, exc)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", index),
        web.route("*", "/signup", signup),
        web.route("*", "/login", login),
        web.post("/logout", logout),
        web.route("*", "/setup", setup),
        web.route("*", "/chat", chat),
        web.route("*", "/integrations", integrations),
        web.get("/admin", admin_home),
        web.route("*", "/admin/settings", admin_settings),
        web.static("/static", HERE / "static"),
    ]
