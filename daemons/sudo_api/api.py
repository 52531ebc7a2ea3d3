"""The /v1 JSON API. Every family-scoped handler takes the family from the caller's credentials,
never from the request, so one family cannot name another's chat, devices or runtime."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from sudo_core import family_archive, host_settings, runtime_image, usage
from sudo_core.accounts import Account, InvalidInput
from sudo_core.families import api_key_for, family_of_room, llm_key_for
from sudo_core.provisioner_client import ProvisionerError

from . import membership, numbers, push, search, voice, whatsapp
from .announcements import WAIT_MAX_SEC
from .chat import MESSAGE_MAX, ChatUnavailable
from .context import (
    SESSION_COOKIE,
    bearer,
    client_address,
    fail,
    json_body,
    new_session,
    public_base,
    require_admin,
    require_family,
    require_session,
    services,
    text_field,
)
from .devices import claim_device, confirm_device
from .fleet import fleet_view, image_view
from .limits import address_key
from .login import log_in
from .media import MediaRefused, file_response, form_upload
from .openapi import document

log = logging.getLogger("sudo-api")

STREAM_PING_SEC = 15.0


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": str(account.id),
        "email": account.email,
        "username": account.username,
        "name": account.display_name,
        "user_id": str(account.family_id) if account.family_id else None,
        "role": account.role,
        "is_admin": account.is_admin,
    }


# Accounts


async def signup(request: web.Request) -> web.Response:
    svc = services(request)
    body = await json_body(request)
    account = await svc.accounts.sign_up(
        text_field(body, "email", 320),
        str(body.get("password") or ""),
        text_field(body, "name", 200),
        text_field(body, "family_name", 200),
    )
    token = await new_session(request, account)
    return web.json_response({"token": token, "account": account_json(account)}, status=201)


async def login(request: web.Request) -> web.Response:
    """WrongPassword (401) and RateLimited (429) are answered by app.errors."""
    body = await json_body(request)
    svc = services(request)
    login = text_field(body, "login" if "login" in body else "email", 320)
    password = str(body.get("password") or "")
    account = await log_in(svc.accounts, svc.limiter, login, password, client_address(request))
    token = await new_session(request, account)
    return web.json_response({"token": token, "account": account_json(account)})


async def logout(request: web.Request) -> web.Response:
    await require_session(request)
    svc = services(request)
    token = bearer(request) or request.cookies.get(SESSION_COOKIE, "")
    await svc.db.aio(svc.accounts.close_session, token)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    session = await require_session(request)
    svc = services(request)
    if request.method == "PATCH":
        body = await json_body(request)
        name = text_field(body, "name", 200) if "name" in body else None
        email = text_field(body, "email", 320) if "email" in body else None
        account = await svc.db.aio(svc.accounts.update_profile, session.account, name, email)
        return web.json_response({"account": account_json(account)})
    return web.json_response({"account": account_json(session.account)})


async def change_password(request: web.Request) -> web.Response:
    """The current password is required; every other session of the account ends."""
    session = await require_session(request)
    body = await json_body(request)
    await services(request).accounts.change_password(
        session, str(body.get("current") or ""), str(body.get("password") or "")
    )
    return web.Response(status=204)


def session_json(info: Any) -> dict[str, Any]:
    return asdict(info)


async def my_sessions(request: web.Request) -> web.Response:
    """The account's sessions; DELETE logs out every other one."""
    session = await require_session(request)
    svc = services(request)
    if request.method == "DELETE":
        ended = await svc.db.aio(svc.accounts.close_sessions, session)
        return web.json_response({"ended": ended})
    infos = await svc.db.aio(svc.accounts.sessions_of, session)
    return web.json_response({"sessions": [session_json(i) for i in infos]})


async def my_session_end(request: web.Request) -> web.Response:
    session = await require_session(request)
    svc = services(request)
    await svc.db.aio(svc.accounts.close_sessions, session, request.match_info["session_id"])
    return web.Response(status=204)


async def leave_family(request: web.Request) -> web.Response:
    session, _ = await require_family(request)
    await membership.leave(services(request), session.account)
    return web.Response(status=204)


async def reset_password(request: web.Request) -> web.Response:
    """Set a new password with a reset link's token; the link is then used up."""
    body = await json_body(request)
    svc = services(request)
    account = await svc.accounts.reset_password(
        text_field(body, "token", 100), str(body.get("password") or "")
    )
    token = await new_session(request, account)
    return web.json_response({"token": token, "account": account_json(account)})


async def whatsapp_reset(request: web.Request) -> web.Response:
    """A forgotten password, by a member's verified WhatsApp number: without `code`, a six-digit
    code is sent there; with `code` and `password`, the password is set."""
    body = await json_body(request)
    svc = services(request)
    number = text_field(body, "number", 40)
    if "code" not in body:
        await membership.send_reset_code(svc, number)
        return web.json_response(
            {"sent": "if this number is linked to an account, a code is on its way"}, status=202
        )
    account = await membership.reset_by_code(
        svc, number, text_field(body, "code", 12), str(body.get("password") or "")
    )
    token = await new_session(request, account)
    return web.json_response({"token": token, "account": account_json(account)})


async def join(request: web.Request) -> web.Response:
    """Take an invitation: join its family (or, an admin's invitation, sign up a new one)."""
    body = await json_body(request)
    svc = services(request)
    account = await svc.members.join(
        text_field(body, "token", 100),
        text_field(body, "email", 320),
        str(body.get("password") or ""),
        text_field(body, "name", 200),
        str(body["family_name"]) if isinstance(body.get("family_name"), str) else None,
    )
    token = await new_session(request, account)
    return web.json_response({"token": token, "account": account_json(account)}, status=201)


# The family: members, invitations, roles


def member_json(account: Account) -> dict[str, Any]:
    return {
        "id": str(account.id),
        "name": account.display_name,
        "role": account.role,
        "email": account.email,
        "username": account.username,
    }


def invitation_json(invitation: Any, token: str | None = None, base: str = "") -> dict[str, Any]:
    shown = {
        "id": invitation.id,
        "role": invitation.role,
        "created_at": invitation.created_at,
        "expires_at": invitation.expires_at,
    }
    return shown | ({"token": token, "url": f"{base}/join/{token}"} if token else {})


async def family_view(request: web.Request) -> web.Response:
    session, family_id = await require_family(request)
    svc = services(request)
    family = await svc.db.aio(svc.db.get_family, family_id)
    members = await svc.db.aio(svc.members.list, family_id)
    invitations = await svc.db.aio(svc.members.invitations, family_id) if session.account.is_parent else []
    days = await svc.db.aio(usage.of_family, svc.db, family_id)
    volume = await svc.db.aio(usage.volume_of, svc.db, family_id)
    return web.json_response(
        {
            "family": {"id": str(family_id), "name": family.name if family else ""},
            "members": [member_json(m) for m in members],
            "invitations": [invitation_json(i) for i in invitations],
            "usage": {
                "daily_budget": await svc.db.aio(usage.budget, svc.db),
                "days": [asdict(d) | {"tokens": d.tokens} for d in days],
                "storage": asdict(volume) | {"over_quota": volume.over_quota} if volume else None,
            },
        }
    )


async def family_delete(request: web.Request) -> web.Response:
    """The owner deletes the family, typing its name to confirm: irreversible."""
    session, family = await require_family(request, parent=True)
    if session.account.role != "owner":
        fail(403, "only the family's owner can delete it")
    name = text_field(await json_body(request), "name", 200)
    await membership.forget_family(services(request), family, name)
    return web.Response(status=204)


async def family_archive_download(request: web.Request) -> web.StreamResponse:
    """The owner downloads everything of the family: the archive `sudoctl backup` writes (the
    agent is stopped while its volume is copied, and wakes on the next message)."""
    session, family = await require_family(request, parent=True)
    if session.account.role != "owner":
        fail(403, "only the family's owner can download its data")
    svc = services(request)
    with tempfile.TemporaryDirectory(prefix="sudo-archive-") as tmp:
        out = Path(tmp) / "family.tar.gz"
        try:
            await family_archive.make_archive(svc.db, svc.provisioner, family, out)
        except ProvisionerError as exc:
            fail(502, f"could not copy the family's data: {exc.body.get('error', exc)}")
        except family_archive.ArchiveError as exc:
            fail(502, str(exc))
        name = f"sudo-family-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/gzip",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Length": str(out.stat().st_size),
            }
        )
        await response.prepare(request)
        with out.open("rb") as archive:
            while chunk := await asyncio.to_thread(archive.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
    return response


async def invite(request: web.Request) -> web.Response:
    session, _ = await require_family(request, parent=True)
    svc = services(request)
    invitation, token = await svc.db.aio(svc.members.invite, session.account)
    return web.json_response(
        {"invitation": invitation_json(invitation, token, public_base(request))}, status=201
    )


async def invitation_revoke(request: web.Request) -> web.Response:
    session, _ = await require_family(request, parent=True)
    svc = services(request)
    await svc.db.aio(svc.members.revoke, session.account, request.match_info["invitation_id"])
    return web.Response(status=204)


async def add_child(request: web.Request) -> web.Response:
    session, _ = await require_family(request, parent=True)
    body = await json_body(request)
    child = await services(request).members.add_child(
        session.account,
        text_field(body, "username", 64),
        str(body.get("password") or ""),
        text_field(body, "name", 200),
    )
    return web.json_response({"member": member_json(child)}, status=201)


async def member_change(request: web.Request) -> web.Response:
    """PATCH: the owner changes a member's role; DELETE: the owner removes them, at once."""
    session, _ = await require_family(request, parent=True)
    svc = services(request)
    member_id = request.match_info["member_id"]
    if request.method == "DELETE":
        await membership.remove_member(svc, session.account, member_id)
        return web.Response(status=204)
    role = text_field(await json_body(request), "role", 20)
    member = await svc.db.aio(svc.members.set_role, session.account, member_id, role)
    return web.json_response({"member": member_json(member)})


async def transfer_ownership(request: web.Request) -> web.Response:
    session, _ = await require_family(request, parent=True)
    svc = services(request)
    member = await svc.db.aio(
        svc.members.transfer_ownership, session.account, request.match_info["member_id"]
    )
    return web.json_response({"member": member_json(member)})


async def member_reset(request: web.Request) -> web.Response:
    """A parent's one-time link (valid an hour) for a member who forgot their password."""
    session, _ = await require_family(request, parent=True)
    svc = services(request)
    token = await svc.db.aio(svc.members.issue_reset, session.account, request.match_info["member_id"])
    return web.json_response({"token": token, "url": f"{public_base(request)}/reset/{token}"}, status=201)


# Chat


async def chat_history(request: web.Request) -> web.Response:
    """The member's own thread (`thread=me`, the default) or the family's Home thread (`home`):
    the latest messages, those `before` a position, or those `around` a message (a search's
    match), half of `limit` on either side of it."""
    session, family = await require_family(request)
    try:
        limit = int(request.query.get("limit", "50"))
        before = int(request.query["before"]) if "before" in request.query else None
    except ValueError:
        fail(400, "limit and before must be integers")
    if not 1 <= limit <= 500:
        fail(400, "limit must be between 1 and 500")
    thread = request.query.get("thread", "me")
    if thread not in ("me", "home"):
        fail(400, "thread must be me or home")
    around = request.query.get("around")
    if around is not None and before is not None:
        fail(400, "ask for messages before a position or around a message, not both")
    member = session.account.id if thread == "me" else None
    svc = services(request)
    if around is not None:
        found = await svc.db.aio(svc.chat.store.around, family, member, around, limit // 2)
        if found is None:
            fail(404, "no message with this id in this thread")
        messages, more, newer = found
        return web.json_response({"messages": [m.to_json() for m in messages], "more": more, "newer": newer})
    messages = await svc.db.aio(svc.chat.store.history, family, member, before, limit + 1)
    more = len(messages) > limit
    return web.json_response(
        {"messages": [m.to_json() for m in messages[-limit:]], "more": more, "newer": False}
    )


async def chat_search(request: web.Request) -> web.Response:
    """The member's own messages holding every word of `q`, newest first, each with a snippet."""
    session, family = await require_family(request)
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        fail(400, "limit must be an integer")
    if not 1 <= limit <= search.MATCHES_MAX:
        fail(400, f"limit must be between 1 and {search.MATCHES_MAX}")
    svc = services(request)
    matches = await svc.db.aio(
        search.search, svc.db, family, session.account.id, request.query.get("q", ""), limit
    )
    return web.json_response({"matches": [m.to_json() for m in matches]})


async def chat_send(request: web.Request) -> web.Response:
    """A member's message: JSON `{"text"}`, or multipart/form-data with `text` and a photo or
    voice note as `file` (the text then optional)."""
    session, family = await require_family(request)
    media = None
    if request.content_type == "multipart/form-data":
        posted = await request.post()  # read whole by app.whole_body, within the upload limit
        try:
            media = await form_upload(posted)
        except MediaRefused as exc:
            fail(exc.status, str(exc))
        text = posted.get("text")
        text = text if isinstance(text, str) else ""
        if len(text) > MESSAGE_MAX or not (text.strip() or media):
            fail(400, f"text is required (1 to {MESSAGE_MAX} characters) unless a file is attached")
    else:
        text = text_field(await json_body(request), "text", MESSAGE_MAX)
    try:
        message = await services(request).chat.send(
            family, session.account.id, text, session.account.display_name, media
        )
    except ChatUnavailable as exc:
        fail(503, str(exc))
    return web.json_response({"message": message.to_json()}, status=202)


async def chat_media(request: web.Request) -> web.Response:
    """The photo or voice note of one of the caller's own messages; 404 for anyone else's."""
    session, family = await require_family(request)
    chat = services(request).chat
    try:
        found = await chat.media(family, session.account.id, request.match_info["message_id"])
    except ChatUnavailable as exc:
        fail(503, str(exc))
    if found is None:
        fail(404, "no file of yours with this message id")
    return file_response(*found)


async def chat_retry(request: web.Request) -> web.Response:
    session, family = await require_family(request)
    try:
        message = await services(request).chat.retry(
            family, session.account.id, request.match_info["message_id"]
        )
    except ChatUnavailable as exc:
        fail(503, str(exc))
    if message is None:
        fail(404, "no failed message of yours with this id")
    return web.json_response({"message": message.to_json()}, status=202)


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events on the member's thread: stored messages as they change, drafts as the
    agent writes, status. It ends when the member is removed."""
    session, family = await require_family(request)
    svc = services(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    with svc.chat.hub.listen(family, session.account.id) as queue, contextlib.suppress(ConnectionResetError):
        # The page closed: the next write (a ping at the latest) ends the stream quietly.
        await response.write(b"retry: 2000\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), STREAM_PING_SEC)
            except TimeoutError:
                await response.write(b": ping\n\n")
                continue
            if event["type"] == svc.chat.hub.CLOSED:
                break
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
    return response


# Web Push


async def push_key(request: web.Request) -> web.Response:
    """The host's VAPID public key, for the browser's pushManager.subscribe."""
    await require_family(request)
    return web.json_response({"public_key": services(request).push.public_key})


async def push_subscribe(request: web.Request) -> web.Response:
    session, _ = await require_family(request)
    svc = services(request)
    try:
        sub = push.Subscription.parse(await json_body(request), svc.settings.api.push_services)
    except push.BadSubscription as exc:
        fail(400, str(exc))
    await svc.db.aio(svc.push.store.subscribe, session.account.id, sub)
    return web.json_response({"endpoint": sub.endpoint}, status=201)


async def push_unsubscribe(request: web.Request) -> web.Response:
    session, _ = await require_family(request)
    svc = services(request)
    endpoint = text_field(await json_body(request), "endpoint", 1000)
    if not await svc.db.aio(svc.push.store.unsubscribe, session.account.id, endpoint):
        fail(404, "no subscription of yours with this endpoint")
    return web.Response(status=204)


async def push_preferences(request: web.Request) -> web.Response:
    """What the member is notified of; PUT sets both."""
    session, _ = await require_family(request)
    svc = services(request)
    if request.method == "PUT":
        body = await json_body(request)
        if not all(isinstance(body.get(kind), bool) for kind in push.KINDS):
            fail(400, f"{' and '.join(push.KINDS)} are required (true or false)")
        prefs = push.Preferences(**{kind: body[kind] for kind in push.KINDS})
        await svc.db.aio(svc.push.store.set_preferences, session.account.id, prefs)
    else:
        prefs = await svc.db.aio(svc.push.store.preferences, session.account.id)
    return web.json_response(asdict(prefs))


# Runtime


async def runtime_ensure(request: web.Request) -> web.Response:
    _, family = await require_family(request)
    try:
        runtime = await services(request).provisioner.ensure(family)
    except ProvisionerError as exc:
        fail(502, f"could not wake your assistant: {exc.body.get('error', exc)}")
    return web.json_response({"state": runtime.state})


# Devices


async def pairing_start(request: web.Request) -> web.Response:
    body = await json_body(request)
    svc = services(request)
    name = text_field(body, "name", 80)
    svc.pairing.reserve("too many pairings started from here", start=address_key(client_address(request)))
    try:
        started = await svc.db.aio(svc.devices.start_pairing, name)
    except InvalidInput as exc:
        fail(400, str(exc))
    return web.json_response(started | {"heartbeat_sec": svc.settings.api.heartbeat_interval_sec}, status=201)


async def pairing_status(request: web.Request) -> web.Response:
    token = bearer(request)
    svc = services(request)
    status = await svc.db.aio(svc.devices.pairing_status, token) if token else None
    if status is None:
        fail(401, "send the device token from pairing as a bearer token")
    return web.json_response(status)


async def pairing_complete(request: web.Request) -> web.Response:
    _, family = await require_family(request, parent=True)
    body = await json_body(request)
    svc = services(request)
    claim = await claim_device(
        svc.devices, svc.pairing, family, text_field(body, "code", 20), client_address(request)
    )
    return web.json_response(
        {
            "pairing": {
                "id": str(claim.pairing_id),
                "device_name": claim.device_name,
                "state": "confirming",
                "expires_at": claim.expires_at,
            }
        },
        status=202,
    )


async def pairing_confirm(request: web.Request) -> web.Response:
    _, family = await require_family(request, parent=True)
    body = await json_body(request)
    svc = services(request)
    pairing_id, code = text_field(body, "pairing_id", 40), text_field(body, "code", 20)
    address = client_address(request)
    device = await confirm_device(svc.devices, svc.pairing, family, pairing_id, code, address)
    return web.json_response({"device": device_json(svc.devices, device)}, status=201)


def device_json(devices: Any, device: Any) -> dict[str, Any]:
    return {
        "id": str(device.id),
        "name": device.name,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "online": devices.online(device),
        "muted": device.muted,
    }


async def devices_list(request: web.Request) -> web.Response:
    _, family = await require_family(request)
    svc = services(request)
    devices = await svc.db.aio(svc.devices.list, family)
    return web.json_response({"devices": [device_json(svc.devices, d) for d in devices]})


async def device_revoke(request: web.Request) -> web.Response:
    _, family = await require_family(request, parent=True)
    try:
        device_id = uuid.UUID(request.match_info["device_id"])
    except ValueError:
        fail(400, "device id must be a UUID")
    if not await services(request).devices.revoke(family, device_id):
        fail(404, "no device of yours with this id")
    return web.Response(status=204)


async def require_device(request: web.Request) -> tuple[uuid.UUID, uuid.UUID]:
    """(device, family) of the paired device whose token the request carries."""
    token = bearer(request)
    owner = await services(request).devices.authenticate(token) if token else None
    if owner is None:
        fail(401, "a paired device's token is required")
    return owner


async def heartbeat(request: web.Request) -> web.Response:
    """A beat; its body, optional ({"muted": true}), says whether the family muted the device."""
    svc = services(request)
    device, family = await require_device(request)
    muted = (await json_body(request)).get("muted", False) if request.body_exists else False
    if not isinstance(muted, bool):
        fail(400, "muted must be true or false")
    svc.devices.heartbeat(device, family, muted)
    return web.json_response({"next_in": svc.settings.api.heartbeat_interval_sec})


# WhatsApp numbers


async def whatsapp_list(request: web.Request) -> web.Response:
    _, family = await require_family(request)
    svc = services(request)
    return web.json_response({"numbers": [n.to_json() for n in await svc.db.aio(svc.numbers.list, family)]})


async def whatsapp_add(request: web.Request) -> web.Response:
    """Record the member's number and send it a code over WhatsApp; they type the code back."""
    session, family = await require_family(request)
    svc = services(request)
    text = text_field(await json_body(request), "number", 40)
    record = await numbers.link_number(svc.numbers, svc.codes, family, session.account.id, text)
    return web.json_response({"number": record.to_json()}, status=201)


async def whatsapp_verify(request: web.Request) -> web.Response:
    session, family = await require_family(request)
    svc = services(request)
    code = text_field(await json_body(request), "code", 12)
    try:
        record = await svc.db.aio(
            svc.numbers.verify, family, session.account.id, request.match_info["number_id"], code
        )
    except LookupError as exc:
        fail(404, str(exc))
    return web.json_response({"number": record.to_json()})


async def whatsapp_remove(request: web.Request) -> web.Response:
    """A member unlinks their own number; a parent, any of the family's."""
    session, family = await require_family(request)
    svc = services(request)
    owner = None if session.account.is_parent else session.account.id
    if not await svc.db.aio(svc.numbers.remove, family, request.match_info["number_id"], owner):
        fail(404, "no number of yours with this id")
    return web.Response(status=204)


async def whatsapp_inbound(request: web.Request) -> web.Response:
    """Twilio's webhook for an inbound message: stored, then answered with empty TwiML."""
    svc = services(request)
    try:
        form = await whatsapp.webhook_form(
            request, await svc.whatsapp.auth_token(), svc.settings.api.trusted_proxies
        )
        await svc.whatsapp.receive(form)
    except whatsapp.WebhookRejected as exc:
        fail(exc.status, str(exc))
    return web.Response(text=whatsapp.EMPTY_TWIML, content_type="application/xml")


async def whatsapp_status(request: web.Request) -> web.Response:
    """Twilio's status callback for a message sent: recorded for the admin."""
    svc = services(request)
    try:
        form = await whatsapp.webhook_form(
            request, await svc.whatsapp.auth_token(), svc.settings.api.trusted_proxies
        )
    except whatsapp.WebhookRejected as exc:
        fail(exc.status, str(exc))
    await svc.whatsapp.on_status(form)
    return web.Response(text=whatsapp.EMPTY_TWIML, content_type="application/xml")


# Voice


async def voice_token(request: web.Request) -> web.Response:
    svc = services(request)
    device, family = await require_device(request)
    settings = await svc.db.aio(svc.db.get_settings, "livekit.")
    try:
        return web.json_response(voice.device_token(settings, device, family))
    except voice.VoiceNotConfigured as exc:
        fail(503, str(exc))


# Service lookups for the voice bridge: authenticated as a service, never as a family, and
# served only on the loopback service listener (see service_routes), never the public one.


def require_service(request: web.Request) -> None:
    expected = services(request).service_token
    if not expected or not hmac.compare_digest((bearer(request) or "").encode(), expected.encode()):
        fail(401, "the service token is required")


async def service_room(request: web.Request) -> web.Response:
    require_service(request)
    room = request.match_info["room"]
    owner = family_of_room(room)
    svc = services(request)
    family = await svc.db.aio(svc.devices.family_of, *owner) if owner else None
    if family is None:
        fail(404, "no paired device of a family has this room")
    return web.json_response(
        {
            "user_id": str(family.id),
            "name": family.name,
            "room": room,
            "gateway_key": llm_key_for(svc.secret, family.id),
        }
    )


async def service_voice_turn(request: web.Request) -> web.Response:
    """A turn the voice bridge heard and answered in a device's room, for the family's Home thread."""
    require_service(request)
    body = await json_body(request)
    room = text_field(body, "room", 200)
    heard = text_field(body, "heard", MESSAGE_MAX)
    answered = text_field(body, "answered", MESSAGE_MAX)
    owner = family_of_room(room)
    if owner is None:
        fail(400, "room must be a home device's room, room_<user_id>_<device_id>")
    messages = await services(request).chat.add_voice_turn(*owner, heard, answered)
    if messages is None:
        fail(404, "no paired device of a family has this room")
    return web.json_response({"messages": [m.to_json() for m in messages]}, status=201)


async def device_room(request: web.Request) -> tuple[uuid.UUID, uuid.UUID]:
    """(family, device) of the room the path names: a paired device's, or 404."""
    owner = family_of_room(request.match_info["room"])
    svc = services(request)
    if owner is None or await svc.db.aio(svc.devices.family_of, *owner) is None:
        fail(404, "no paired device of a family has this room")
    return owner


async def service_announcements(request: web.Request) -> web.Response:
    """What the family's agent said to this room's device and the room has not said yet, oldest
    first; with `wait` (seconds), held until there is something or the time is up: each room's
    session holds one such poll."""
    require_service(request)
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        fail(400, "wait must be a number of seconds")
    if not 0 <= wait <= WAIT_MAX_SEC:
        fail(400, f"wait must be between 0 and {WAIT_MAX_SEC:g} seconds")
    family, device = await device_room(request)
    pending = await services(request).chat.announcements.wait(family, device, wait)
    return web.json_response({"announcements": [a.to_json() for a in pending]})


async def service_announcement_spoken(request: web.Request) -> web.Response:
    """The room said the announcement: it is not handed out again, and the Home thread shows it
    spoken."""
    require_service(request)
    family, device = await device_room(request)
    announcements = services(request).chat.announcements
    if not await announcements.spoken(family, device, request.match_info["announcement_id"]):
        fail(404, "this room has no such announcement to say (said already, or given up)")
    return web.Response(status=204)


async def service_runtime(request: web.Request) -> web.Response:
    """Wake the family's agent and say where it answers, with the key it expects."""
    require_service(request)
    svc = services(request)
    try:
        family = uuid.UUID(request.match_info["user_id"])
    except ValueError:
        fail(400, "user id must be a UUID")
    try:
        runtime = await svc.provisioner.ensure(family)
    except ProvisionerError as exc:
        fail(exc.status if exc.status in (404, 502) else 502, exc.body.get("error", str(exc)))
    await svc.db.aio(svc.db.touch_family, family)
    return web.json_response(
        {
            "url": runtime.url,
            "api_key": api_key_for(svc.secret, family),
            "identity_url": f"{runtime.chat_url}/identity",
        }
    )


async def service_livekit(request: web.Request) -> web.Response:
    """The LiveKit server the voice bridge registers with, as the admin set it."""
    require_service(request)
    svc = services(request)
    settings = await svc.db.aio(svc.db.get_settings, "livekit.")
    try:
        return web.json_response(voice.server_settings(settings))
    except voice.VoiceNotConfigured as exc:
        fail(503, str(exc))


# Admin


async def admin_settings(request: web.Request) -> web.Response:
    await require_admin(request)
    svc = services(request)
    if request.method == "PUT":
        try:
            clean = host_settings.validate(await json_body(request), svc.settings.api.allow_http_urls)
        except host_settings.InvalidSetting as exc:
            fail(400, str(exc))
        changed = await svc.db.aio(host_settings.store, svc.db, clean)
        restarting = any(host_settings.FIELDS[k].restart for k in changed) and svc.fleet.start(
            "settings changed"
        )
        log.info("admin changed settings: %s", ", ".join(changed) or "nothing")
        return web.json_response(
            {
                "settings": await svc.db.aio(host_settings.current, svc.db),
                "changed": changed,
                "cleared": host_settings.cleared(changed, clean),
                "restarting": restarting,
            }
        )
    return web.json_response({"settings": await svc.db.aio(host_settings.current, svc.db)})


async def admin_restart_all(request: web.Request) -> web.Response:
    await require_admin(request)
    fleet = services(request).fleet
    if request.method == "POST" and not fleet.start("requested by an admin"):
        fail(409, "a restart of every runtime is already running", progress=fleet.progress)
    return web.json_response({"progress": fleet.progress}, status=202 if request.method == "POST" else 200)


async def admin_image(request: web.Request) -> web.Response:
    """GET: the runtimes' image (current, previous, history) and the progress of a change started
    here. POST .../upgrade {"ref"}: canary, then the fleet; POST .../rollback: the previous image."""
    await require_admin(request)
    svc = services(request)
    if request.method == "POST":
        ref = None
        if request.path.endswith("/upgrade"):
            ref = (await json_body(request)).get("ref")
            if not isinstance(ref, str) or not runtime_image.REF.fullmatch(ref):
                fail(400, "ref must name an image on this host, e.g. sudo-hermes:0.20.0")
        if not svc.image.start(ref):
            fail(409, "an image upgrade or rollback is already running", progress=svc.image.progress)
    body = {"image": await image_view(svc.settings), "progress": svc.image.progress}
    return web.json_response(body, status=202 if request.method == "POST" else 200)


def family_id_of(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["user_id"])
    except ValueError:
        fail(400, "user id must be a UUID")


async def admin_family(request: web.Request) -> web.Response:
    """DELETE: the admin deletes a family (irreversible)."""
    await require_admin(request)
    await membership.forget_family(services(request), family_id_of(request))
    return web.Response(status=204)


async def admin_family_disabled(request: web.Request) -> web.Response:
    """POST .../disable stops the family's agent and tells its members; .../enable undoes it."""
    await require_admin(request)
    disabled = request.path.endswith("/disable")
    await membership.set_disabled(services(request), family_id_of(request), disabled)
    return web.json_response({"disabled": disabled})


async def admin_reset(request: web.Request) -> web.Response:
    """A one-time reset link for any account, for the admin to hand over."""
    await require_admin(request)
    svc = services(request)
    try:
        account = await svc.db.aio(svc.accounts.get, uuid.UUID(request.match_info["account_id"]))
    except ValueError:
        account = None
    if account is None:
        fail(404, "no account with this id")
    token = await svc.db.aio(svc.accounts.issue_reset, account.id, None)
    return web.json_response({"token": token, "url": f"{public_base(request)}/reset/{token}"}, status=201)


async def admin_invitations(request: web.Request) -> web.Response:
    """The admin's invitations to sign up a new family (sign-up mode `invite`): POST issues one."""
    await require_admin(request)
    svc = services(request)
    if request.method == "POST":
        invitation, token = await svc.db.aio(svc.members.invite, None)
        return web.json_response(
            {"invitation": invitation_json(invitation, token, public_base(request))}, status=201
        )
    invitations = await svc.db.aio(svc.members.invitations, None)
    return web.json_response({"invitations": [invitation_json(i) for i in invitations]})


async def admin_invitation_revoke(request: web.Request) -> web.Response:
    await require_admin(request)
    svc = services(request)
    await svc.db.aio(svc.members.revoke, None, request.match_info["invitation_id"])
    return web.Response(status=204)


async def admin_fleet(request: web.Request) -> web.Response:
    await require_admin(request)
    return web.json_response(await fleet_view(services(request)))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/auth/signup", signup),
        web.post("/v1/auth/login", login),
        web.post("/v1/auth/logout", logout),
        web.get("/v1/me", me),
        web.patch("/v1/me", me),
        web.post("/v1/me/password", change_password),
        web.get("/v1/me/sessions", my_sessions),
        web.delete("/v1/me/sessions", my_sessions),
        web.delete("/v1/me/sessions/{session_id}", my_session_end),
        web.post("/v1/me/leave", leave_family),
        web.post("/v1/auth/join", join),
        web.post("/v1/auth/reset", reset_password),
        web.post("/v1/auth/reset/whatsapp", whatsapp_reset),
        web.get("/v1/family", family_view),
        web.delete("/v1/family", family_delete),
        web.get("/v1/family/archive", family_archive_download),
        web.post("/v1/family/invitations", invite),
        web.delete("/v1/family/invitations/{invitation_id}", invitation_revoke),
        web.post("/v1/family/children", add_child),
        web.patch("/v1/family/members/{member_id}", member_change),
        web.delete("/v1/family/members/{member_id}", member_change),
        web.post("/v1/family/members/{member_id}/owner", transfer_ownership),
        web.post("/v1/family/members/{member_id}/reset", member_reset),
        web.get("/v1/chat/messages", chat_history),
        web.post("/v1/chat/messages", chat_send),
        web.post("/v1/chat/messages/{message_id}/retry", chat_retry),
        web.get("/v1/chat/media/{message_id}", chat_media),
        web.get("/v1/chat/stream", chat_stream),
        web.get("/v1/chat/search", chat_search),
        web.post("/v1/runtime/ensure", runtime_ensure),
        web.get("/v1/push/key", push_key),
        web.post("/v1/push/subscriptions", push_subscribe),
        web.delete("/v1/push/subscriptions", push_unsubscribe),
        web.get("/v1/push/preferences", push_preferences),
        web.put("/v1/push/preferences", push_preferences),
        web.post("/v1/devices/pairing", pairing_start),
        web.get("/v1/devices/pairing", pairing_status),
        web.post("/v1/devices/pairing/complete", pairing_complete),
        web.post("/v1/devices/pairing/confirm", pairing_confirm),
        web.get("/v1/devices", devices_list),
        web.delete("/v1/devices/{device_id}", device_revoke),
        web.post("/v1/devices/heartbeat", heartbeat),
        web.get("/v1/whatsapp/numbers", whatsapp_list),
        web.post("/v1/whatsapp/numbers", whatsapp_add),
        web.post("/v1/whatsapp/numbers/{number_id}/verify", whatsapp_verify),
        web.delete("/v1/whatsapp/numbers/{number_id}", whatsapp_remove),
        web.post("/v1/whatsapp/inbound", whatsapp_inbound),
        web.post("/v1/whatsapp/status", whatsapp_status),
        web.post("/v1/voice/token", voice_token),
        web.get("/v1/admin/settings", admin_settings),
        web.put("/v1/admin/settings", admin_settings),
        web.get("/v1/admin/restart-all", admin_restart_all),
        web.post("/v1/admin/restart-all", admin_restart_all),
        web.get("/v1/admin/fleet", admin_fleet),
        web.get("/v1/admin/image", admin_image),
        web.post("/v1/admin/image/upgrade", admin_image),
        web.post("/v1/admin/image/rollback", admin_image),
        web.delete("/v1/admin/families/{user_id}", admin_family),
        web.post("/v1/admin/families/{user_id}/disable", admin_family_disabled),
        web.post("/v1/admin/families/{user_id}/enable", admin_family_disabled),
        web.post("/v1/admin/accounts/{account_id}/reset", admin_reset),
        web.get("/v1/admin/invitations", admin_invitations),
        web.post("/v1/admin/invitations", admin_invitations),
        web.delete("/v1/admin/invitations/{invitation_id}", admin_invitation_revoke),
        web.get("/v1/openapi.json", openapi),
    ]


def service_routes() -> list[web.RouteDef]:
    """The voice bridge's lookups, served on `api.service_listen` only (loopback, never behind
    Caddy): they hand out every family's runtime address and keys."""
    return [
        web.get("/v1/service/rooms/{room}", service_room),
        web.post("/v1/service/runtimes/{user_id}", service_runtime),
        web.get("/v1/service/livekit", service_livekit),
        web.post("/v1/service/voice/turns", service_voice_turn),
        web.get("/v1/service/rooms/{room}/announcements", service_announcements),
        web.post(
            "/v1/service/rooms/{room}/announcements/{announcement_id}/spoken", service_announcement_spoken
        ),
    ]
