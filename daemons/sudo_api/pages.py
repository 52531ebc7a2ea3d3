"""The website: server-rendered pages with plain forms, a little JavaScript for live chat.

Every form carries the session's CSRF token; the pages' scripts send it as X-CSRF-Token to /v1.
Without JavaScript the chat still works: the form posts, the page reloads with the reply
once it is there.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import jinja2
import segno
from aiohttp import web
from markupsafe import Markup

from sudo_core import host_settings, runtime_image, usage
from sudo_core.accounts import (
    Account,
    AccountError,
    Conflict,
    FamilyDisabled,
    InvalidInput,
    NotAllowed,
    Session,
)

from . import membership, search
from .chat import MESSAGE_MAX, ChatUnavailable
from .context import (
    REFUSALS,
    SESSION_COOKIE,
    ApiError,
    check_csrf,
    client_address,
    load_session,
    new_session,
    public_base,
    services,
    status_of,
)
from .devices import Claim, PairingError, claim_device, confirm_device
from .fleet import fleet_view
from .limits import RateLimited, StorageFull
from .login import WrongPassword, log_in
from .markdown import to_html
from .media import MediaRefused, file_response, form_upload
from .numbers import link_number

log = logging.getLogger("sudo-api.pages")

HERE = Path(__file__).parent
HISTORY_ON_PAGE = 200
AROUND_ON_PAGE = 25
"""Messages shown on either side of the one a search result leads to."""
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["clock"] = lambda t: time.strftime("%H:%M", time.localtime(t)) if t else ""
templates.filters["day"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""
templates.filters["mib"] = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"
templates.filters["size"] = lambda b: "-" if b is None else usage.size_text(b)
templates.filters["markdown"] = lambda text: Markup(to_html(text))  # cleaned by nh3: see markdown.py


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


REFUSED = (*REFUSALS, ApiError)
"""What a page's action may be refused with: shown on the page, with `page_error`'s status."""


def page_error(exc: Exception) -> tuple[int, str]:
    """The status and the message a page shows for a refused action."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    return status_of(exc), str(exc)


async def start_session(request: web.Request, account: Account, to: str) -> NoReturn:
    """Log the browser in (a new session, noted with its client) and go on to `to`."""
    token = await new_session(request, account)
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


def end_session(request: web.Request, to: str) -> NoReturn:
    """Forget the browser's session cookie and go on to `to`."""
    response = web.HTTPSeeOther(to)
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def invitation_link(request: web.Request, token: str) -> dict[str, Any]:
    """An invitation's link and its QR code (inline SVG: nothing fetched from elsewhere)."""
    url = f"{public_base(request)}/join/{token}"
    return {"url": url, "qr": Markup(segno.make(url, error="m").svg_inline(scale=4, title="QR code"))}


def safe_next(value: str | None) -> str:
    """A local path to go on to after logging in, or /chat. Browsers drop tabs and newlines
    from a URL and read a backslash as a slash (`/\t/evil.example` is `//evil.example`), so
    the path is judged as the browser will read it, and handed on in that form."""
    path = "".join(c for c in value or "" if c.isprintable() and not c.isspace()).replace("\\", "/")
    parts = urlsplit(path)
    if not path.startswith("/") or path.startswith("//") or parts.scheme or parts.netloc:
        return "/chat"
    return path


async def index(request: web.Request) -> web.Response:
    session = await load_session(request)
    raise web.HTTPSeeOther("/chat" if session else "/login")


async def signup(request: web.Request) -> web.Response:
    """Anyone creates a family, if the host's sign-up mode is `open`; otherwise the page says how."""
    svc = services(request)
    mode = svc.accounts.signup
    if request.method == "GET":
        return render("signup.html", None, mode=mode, values={}, error=None)
    data = await form(request)
    try:
        account = await svc.accounts.sign_up(
            data.get("email", ""), data.get("password", ""), data.get("name", ""), data.get("family_name", "")
        )
    except AccountError as exc:
        return render("signup.html", None, status=status_of(exc), mode=mode, values=data, error=str(exc))
    await start_session(request, account, "/chat")


async def login(request: web.Request) -> web.Response:
    svc = services(request)
    if request.method == "GET":
        if not await svc.db.aio(svc.accounts.has_admin):
            raise web.HTTPSeeOther("/setup")
        return render("login.html", None, email="", error=None, next=request.query.get("next", ""))
    data = await form(request)
    email, password = data.get("email", ""), data.get("password", "")
    try:
        account = await log_in(svc.accounts, svc.limiter, email, password, client_address(request))
    except (RateLimited, WrongPassword) as exc:
        status, error = page_error(exc)
        return render("login.html", None, status=status, email=email, error=error, next=data.get("next", ""))
    await start_session(request, account, safe_next(data.get("next")) if account.family_id else "/admin")


async def logout(request: web.Request) -> web.Response:
    session = await page_session(request, family=False)
    await form(request, session)
    svc = services(request)
    await svc.db.aio(svc.accounts.close_session, request.cookies.get(SESSION_COOKIE, ""))
    end_session(request, "/login")


async def setup(request: web.Request) -> web.Response:
    """First run: whoever holds the setup token (sudo-api prints it at start, while there is no
    admin) creates the admin; afterwards this page is gone. Without the token, the first
    visitor of a fresh host's address would become its admin."""
    svc = services(request)
    if await svc.db.aio(svc.accounts.has_admin):
        raise web.HTTPNotFound()
    data = await form(request) if request.method == "POST" else {}
    token = data.get("token") or request.query.get("token", "")
    if not hmac.compare_digest(token.encode(), svc.setup_token.encode()):
        return render("setup.html", None, status=403, token=None, values={}, error=None)
    if request.method == "GET":
        return render("setup.html", None, token=token, values={}, error=None)
    try:
        account = await svc.accounts.sign_up(
            data.get("email", ""), data.get("password", ""), data.get("name", ""), None, is_admin=True
        )
    except InvalidInput as exc:
        return render("setup.html", None, status=400, token=token, values=data, error=str(exc))
    await start_session(request, account, "/admin")


async def chat(request: web.Request) -> web.Response:
    """The member's own thread; `?thread=home`, the family's Home thread (voice, read only).
    `?q=` searches the member's own thread; `?around=<id>` shows the history around a message
    (a search's match), marked, where a search result leads."""
    session = await page_session(request)
    svc = services(request)
    family = session.account.family_id
    assert family is not None
    home = request.query.get("thread") == "home"
    error, status, text = None, 200, ""
    if request.method == "POST":
        data = await form(request, session)
        text = data.get("text", "").strip()
        try:
            media = await form_upload(await request.post())
        except MediaRefused as exc:
            media, error, status = None, str(exc), exc.status
        if not error and (len(text) > MESSAGE_MAX or not (text or media)):
            error, status = f"a message is 1 to {MESSAGE_MAX} characters, or a photo", 400
        if not error:
            try:
                await svc.chat.send(family, session.account.id, text, session.account.display_name, media)
            except ChatUnavailable as exc:
                error, status = str(exc), 503
            except RateLimited as exc:
                error, status = str(exc), 429
            except StorageFull as exc:
                error, status = str(exc), 507
            else:
                raise web.HTTPSeeOther("/chat")
    member = None if home else session.account.id
    query, matches = request.query.get("q"), None
    if query is not None and not home:
        try:
            matches = await svc.db.aio(search.search, svc.db, family, session.account.id, query)
        except InvalidInput as exc:
            error, status = str(exc), 400
    around, newer = request.query.get("around") or None, False
    found = None
    if around:
        found = await svc.db.aio(svc.chat.store.around, family, member, around, AROUND_ON_PAGE)
    if found:
        messages, more, newer = found
    else:
        if around:
            error, status, around = "no message with this id in this thread", 404, None
        messages = await svc.db.aio(svc.chat.store.history, family, member, None, HISTORY_ON_PAGE + 1)
        more = len(messages) > HISTORY_ON_PAGE
        messages = messages[-HISTORY_ON_PAGE:]
    return render(
        "chat.html",
        session,
        status=status,
        home=home,
        messages=messages,
        more=more,
        newer=newer,
        around=around,
        query=query or "",
        matches=matches,
        error=error,
        draft=text if error else "",
        family_name=await svc.db.aio(lambda: svc.db.get_family(family).name),  # type: ignore[union-attr]
    )


async def chat_media(request: web.Request) -> web.Response:
    """A photo or voice note the member sent, for their history page; 404 for anyone else's."""
    session = await page_session(request)
    assert session.account.family_id is not None
    family, member = session.account.family_id, session.account.id
    try:
        found = await services(request).chat.media(family, member, request.match_info["message_id"])
    except ChatUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None
    if found is None:
        raise web.HTTPNotFound(text="no file of yours with this message id")
    return file_response(*found)


async def integrations(request: web.Request) -> web.Response:
    session = await page_session(request)
    svc = services(request)
    family = session.account.family_id
    assert family is not None
    # Opening this page means the family is about to use its agent: wake it now, in the background.
    svc.background(_wake(svc, family))
    message = error = claim = None
    if request.method == "POST":
        data = await form(request, session)
        try:
            if data.get("action") in ("pair", "confirm", "revoke") and not session.account.is_parent:
                raise NotAllowed(
                    "only the family's parents (its owner and adults) can pair or revoke devices"
                )
            if data.get("action") == "pair":
                claim = await claim_device(
                    svc.devices, svc.pairing, family, data.get("code", ""), client_address(request)
                )
            elif data.get("action") == "confirm":
                pairing, code = data.get("pairing_id", ""), data.get("code", "")
                try:
                    device = await confirm_device(
                        svc.devices, svc.pairing, family, pairing, code, client_address(request)
                    )
                except PairingError:  # show the form again, to type the code again
                    claim = Claim(uuid.UUID(pairing), data.get("device_name", ""), 0.0)
                    raise
                claim = None
                message = f"{device.name} is paired."
            elif data.get("action") == "revoke":
                if not await svc.devices.revoke(family, uuid.UUID(data.get("device_id", ""))):
                    error = "no such device"
                else:
                    message = "Device revoked."
            elif data.get("action") == "add-number":
                number = data.get("number", "")
                record = await link_number(svc.numbers, svc.codes, family, session.account.id, number)
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
        except REFUSED as exc:
            _, error = page_error(exc)
        except (ValueError, LookupError):
            error = "no such device or number"
    devices = await svc.db.aio(svc.devices.list, family)
    return render(
        "integrations.html",
        session,
        status=400 if error else 200,
        claim=claim,
        devices=[(d, svc.devices.online(d)) for d in devices],
        numbers=await svc.db.aio(svc.numbers.list, family),
        message=message,
        error=error,
    )


async def admin_home(request: web.Request) -> web.Response:
    """The host at a glance; the admin's actions on families, invitations and accounts."""
    session = await page_session(request, family=False, admin=True)
    svc = services(request)
    message = error = None
    status = 200
    shown: dict[str, Any] = {}
    if request.method == "POST":
        data = await form(request, session)
        action = data.get("action", "")
        try:
            if action in ("disable", "enable", "delete"):
                family = uuid.UUID(data.get("family_id", ""))
                if action == "delete":
                    await membership.forget_family(svc, family, data.get("name", ""))
                    message = "The family is deleted."
                else:
                    await membership.set_disabled(svc, family, action == "disable")
                    message = f"The family is {action}d."
            elif action == "invite":
                _, token = await svc.db.aio(svc.members.invite, None)
                shown["invitation"] = invitation_link(request, token)
                message = "Invitation made: whoever opens the link creates a family."
            elif action == "revoke-invitation":
                await svc.db.aio(svc.members.revoke, None, data.get("invitation_id", ""))
                message = "Invitation revoked."
            elif action in ("image-upgrade", "image-rollback"):
                ref = data.get("ref", "").strip() if action == "image-upgrade" else None
                if ref is not None and not runtime_image.REF.fullmatch(ref):
                    raise InvalidInput("name an image on this host, e.g. sudo-hermes:0.20.0")
                if not svc.image.start(ref):
                    raise Conflict("an image upgrade or rollback is already running")
                message = (
                    f"Upgrading to {ref}: a canary runtime first, then every running one."
                    if ref
                    else "Rolling back to the previous image."
                )
            elif action == "reset":
                account = await svc.db.aio(svc.accounts.by_login, data.get("login", ""))
                if account is None:
                    raise InvalidInput(f"no account {data.get('login', '')!r}")
                token = await svc.db.aio(svc.accounts.issue_reset, account.id, None)
                shown["reset"] = f"{public_base(request)}/reset/{token}"
                message = f"Reset link for {account.login}: it works once, for an hour."
            else:
                raise InvalidInput("unknown action")
        except REFUSED as exc:
            status, error = page_error(exc)
        except ValueError:
            status, error = 400, "no such family"
    view = await fleet_view(svc)
    return render(
        "admin.html",
        session,
        status=status,
        invitations=await svc.db.aio(svc.members.invitations, None),
        signup=svc.accounts.signup,
        shown=shown,
        message=message,
        error=error,
        image_progress=svc.image.progress,
        **view,
    )


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
                fields = {k: v for k, v in data.items() if k in host_settings.FIELDS}
                clean = host_settings.validate(fields, svc.settings.api.allow_http_urls)
                changed = await svc.db.aio(host_settings.store, svc.db, clean)
            except host_settings.InvalidSetting as exc:
                error = str(exc)
            else:
                message = "Saved." if changed else "Nothing changed."
                if cleared := host_settings.cleared(changed, clean):
                    labels = ", ".join(host_settings.FIELDS[k].label for k in cleared)
                    message += f" Its address changed, so this is cleared: {labels}. Enter it again."
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


async def service_worker(request: web.Request) -> web.FileResponse:
    """static/sw.js at the site's root, so that its scope is the whole site; checked for a new
    version on every visit, never taken from the HTTP cache."""
    return web.FileResponse(
        HERE / "static" / "sw.js",
        headers={"Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-cache"},
    )


async def manifest(request: web.Request) -> web.FileResponse:
    """The web app's manifest: what a browser installs (name, icons, /chat to start at)."""
    return web.FileResponse(
        HERE / "static" / "manifest.webmanifest",
        headers={"Content-Type": "application/manifest+json", "Cache-Control": "no-cache"},
    )


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", index),
        web.route("*", "/signup", signup),
        web.route("*", "/login", login),
        web.post("/logout", logout),
        web.route("*", "/setup", setup),
        web.route("*", "/chat", chat),
        web.get("/chat/media/{message_id}", chat_media),
        web.route("*", "/integrations", integrations),
        web.route("*", "/admin", admin_home),
        web.route("*", "/admin/settings", admin_settings),
        web.get("/sw.js", service_worker),
        web.get("/manifest.webmanifest", manifest),
        web.static("/static", HERE / "static"),
    ]
