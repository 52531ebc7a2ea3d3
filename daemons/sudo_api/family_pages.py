"""The pages of a family's members: /family (members, invitations, children, roles), /account
(profile, password, sessions), and the pages reached without a login: /join/{token} (an
invitation), /reset/{token} (a reset link) and /forgot (a reset code on WhatsApp).

A link handed to someone else (an invitation, a reset link) is shown once, when it is made:
only its hash is stored. The invitation's QR code comes with it, drawn on the server.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from sudo_core import usage
from sudo_core.accounts import InvalidInput
from sudo_core.members import require_owner

from . import membership, push
from .context import public_base, services
from .pages import (
    REFUSED,
    end_session,
    form,
    invitation_link,
    page_error,
    page_session,
    render,
    start_session,
)


async def family(request: web.Request) -> web.Response:
    session = await page_session(request)
    svc = services(request)
    actor = session.account
    family_id = actor.family_id
    assert family_id is not None
    message = error = None
    status = 200
    shown: dict[str, Any] = {}
    if request.method == "POST":
        data = await form(request, session)
        action, member = data.get("action", ""), data.get("member_id", "")
        try:
            if action == "invite":
                _, token = await svc.db.aio(svc.members.invite, actor)
                shown["invitation"] = invitation_link(request, token)
                message = "Invitation made: hand over the link or let them scan the code."
            elif action == "revoke-invitation":
                await svc.db.aio(svc.members.revoke, actor, data.get("invitation_id", ""))
                message = "Invitation revoked."
            elif action == "add-child":
                child = await svc.members.add_child(
                    actor, data.get("username", ""), data.get("password", ""), data.get("name", "")
                )
                message = f"{child.display_name} can now log in as {child.username}."
            elif action == "set-role":
                changed = await svc.db.aio(svc.members.set_role, actor, member, data.get("role", ""))
                message = f"{changed.display_name}'s role is now {changed.role}."
            elif action == "transfer":
                owner = await svc.db.aio(svc.members.transfer_ownership, actor, member)
                message = f"{owner.display_name} is now the family's owner."
            elif action == "remove":
                removed = await membership.remove_member(svc, actor, member)
                message = f"{removed.display_name} is no longer in the family."
            elif action == "reset":
                token = await svc.db.aio(svc.members.issue_reset, actor, member)
                shown["reset"] = f"{public_base(request)}/reset/{token}"
                message = "Reset link made: it works once, for an hour."
            elif action == "leave":
                await membership.leave(svc, actor)
                end_session(request, "/login")
            elif action == "delete-family":
                require_owner(actor)
                await membership.forget_family(svc, family_id, data.get("name", ""))
                end_session(request, "/login")
            else:
                raise InvalidInput("unknown action")
        except REFUSED as exc:
            status, error = page_error(exc)
    # Read again: a changed role (ownership handed over) shows at once.
    actor = await svc.db.aio(svc.accounts.get, actor.id) or actor
    invitations = await svc.db.aio(svc.members.invitations, family_id) if actor.is_parent else []
    return render(
        "family.html",
        replace(session, account=actor),
        status=status,
        family=await svc.db.aio(svc.db.get_family, family_id),
        members=await svc.db.aio(svc.members.list, family_id),
        days=await svc.db.aio(usage.of_family, svc.db, family_id),
        budget=await svc.db.aio(usage.budget, svc.db),
        volume=await svc.db.aio(usage.volume_of, svc.db, family_id),
        invitations=invitations,
        shown=shown,
        message=message,
        error=error,
    )


async def account(request: web.Request) -> web.Response:
    session = await page_session(request, family=False)
    svc = services(request)
    message = error = None
    status = 200
    if request.method == "POST":
        data = await form(request, session)
        action = data.get("action", "")
        try:
            if action == "profile":
                email = data.get("email", "").strip() or None
                await svc.db.aio(svc.accounts.update_profile, session.account, data.get("name", ""), email)
                message = "Saved."
            elif action == "password":
                await svc.accounts.change_password(session, data.get("current", ""), data.get("password", ""))
                message = "Password changed: every other session has ended."
            elif action == "end-session":
                await svc.db.aio(svc.accounts.close_sessions, session, data.get("session_id", ""))
                message = "That session has ended."
            elif action == "end-others":
                ended = await svc.db.aio(svc.accounts.close_sessions, session)
                message = f"Logged out everywhere else ({ended} session{'' if ended == 1 else 's'})."
            elif action == "notifications" and session.account.family_id:
                prefs = push.Preferences(**{kind: kind in data for kind in push.KINDS})
                await svc.db.aio(svc.push.store.set_preferences, session.account.id, prefs)
                message = "Notifications saved."
            else:
                raise InvalidInput("unknown action")
        except REFUSED as exc:
            status, error = page_error(exc)
    fresh = await svc.db.aio(svc.accounts.get, session.account.id)  # a changed name shows at once
    return render(
        "account.html",
        replace(session, account=fresh or session.account),
        status=status,
        sessions=await svc.db.aio(svc.accounts.sessions_of, session),
        notifications=await svc.db.aio(svc.push.store.preferences, session.account.id),
        message=message,
        error=error,
    )


async def join(request: web.Request) -> web.Response:
    """An invitation's link: join its family, or (the admin's invitation) create a family."""
    svc = services(request)
    token = request.match_info["token"]
    try:
        invitation = await svc.db.aio(svc.members.invitation, token)
    except REFUSED as exc:
        status, error = page_error(exc)
        return render("join.html", None, status=status, invitation=None, values={}, error=error)
    values: dict[str, str] = {}
    if request.method == "POST":
        values = await form(request)
        try:
            account = await svc.members.join(
                token,
                values.get("email", ""),
                values.get("password", ""),
                values.get("name", ""),
                values.get("family_name") if invitation.family_id is None else None,
            )
        except REFUSED as exc:
            status, error = page_error(exc)
            return render("join.html", None, status=status, invitation=invitation, values=values, error=error)
        await start_session(request, account, "/chat")
    return render("join.html", None, invitation=invitation, values=values, error=None)


async def reset(request: web.Request) -> web.Response:
    """A reset link: set a new password, which ends every session of the account."""
    svc = services(request)
    token = request.match_info["token"]
    try:
        target = await svc.db.aio(svc.accounts.reset_target, token)
    except REFUSED as exc:
        status, error = page_error(exc)
        return render("reset.html", None, status=status, target=None, error=error)
    if request.method == "POST":
        data = await form(request)
        try:
            account = await svc.accounts.reset_password(token, data.get("password", ""))
        except REFUSED as exc:
            status, error = page_error(exc)
            return render("reset.html", None, status=status, target=target, error=error)
        await start_session(request, account, "/chat" if account.family_id else "/admin")
    return render("reset.html", None, target=target, error=None)


async def forgot(request: web.Request) -> web.Response:
    """A forgotten password: ask a parent or the admin for a link, or get a code on WhatsApp."""
    svc = services(request)
    if request.method == "GET":
        return render("forgot.html", None, number="", sent=False, error=None)
    data = await form(request)
    number = data.get("number", "")
    sending = data.get("action") == "send"
    try:
        if sending:
            await membership.send_reset_code(svc, number)
            return render("forgot.html", None, status=202, number=number, sent=True, error=None)
        account = await membership.reset_by_code(svc, number, data.get("code", ""), data.get("password", ""))
    except REFUSED as exc:
        status, error = page_error(exc)
        return render("forgot.html", None, status=status, number=number, sent=not sending, error=error)
    await start_session(request, account, "/chat" if account.family_id else "/admin")


def routes() -> list[web.RouteDef]:
    return [
        web.route("*", "/family", family),
        web.route("*", "/account", account),
        web.route("*", "/join/{token}", join),
        web.route("*", "/reset/{token}", reset),
        web.route("*", "/forgot", forgot),
    ]
