"""What the API and the pages do to members and families beyond the core's rules: whatever this
process holds of them (open chat streams, device tokens) goes with them, and a forgotten
password is reset by a code sent on WhatsApp. Both front ends call these, and translate the
errors (context.status_of): `AccountError`s, `limits.RateLimited`, Twilio's errors, and
`AgentUnreachable` when the provisioner fails."""

from __future__ import annotations

import uuid
from typing import Any

from sudo_core import family_admin, twilio
from sudo_core.accounts import Account, InvalidInput, NotFound, code_token
from sudo_core.provisioner_client import ProvisionerError

from .numbers import clean_number


class AgentUnreachable(Exception):
    """The provisioner failed to stop or remove the family's agent (502); the message says what
    was done and what to do."""


def provisioner_trouble(exc: ProvisionerError | OSError) -> str:
    return str(exc.body.get("error", exc)) if isinstance(exc, ProvisionerError) else str(exc)


async def forget_family(svc: Any, family: uuid.UUID, confirm_name: str | None = None) -> None:
    """Delete a family and drop what this process holds of it: device tokens, open streams."""
    try:
        await family_admin.delete(svc.db, svc.provisioner, family, confirm_name)
    except (ProvisionerError, OSError) as exc:
        raise AgentUnreachable(
            f"could not remove the family's agent: {provisioner_trouble(exc)}; try again"
        ) from exc
    svc.devices.forget_family(family)
    svc.chat.hub.disconnect(family)


async def set_disabled(svc: Any, family: uuid.UUID, disabled: bool) -> None:
    """The admin disables a family (its agent stops, its members are refused) or enables it."""
    try:
        await family_admin.set_disabled(svc.db, svc.provisioner, family, disabled)
    except (ProvisionerError, OSError) as exc:
        trouble = provisioner_trouble(exc)
        raise AgentUnreachable(f"disabled, but the agent could not be stopped: {trouble}") from exc


async def remove_member(svc: Any, actor: Account, member_id: str) -> Account:
    """The owner removes a member: the core deletes the account, and their open streams end now."""
    removed = await svc.db.aio(svc.members.remove, actor, member_id)
    svc.chat.hub.disconnect(removed.family_id, removed.id)
    return removed


async def leave(svc: Any, actor: Account) -> None:
    await svc.db.aio(svc.members.leave, actor)
    svc.chat.hub.disconnect(actor.family_id, actor.id)


async def send_reset_code(svc: Any, number: str) -> None:
    """A six-digit code to the member whose verified WhatsApp number this is. Whether the number
    is linked is never told (the caller says the same either way); sends are limited per number."""
    number = clean_number(number)
    svc.codes.reserve("this number was sent too many codes", number=number)
    member = await svc.db.aio(svc.numbers.member_of, number)
    if member is None:
        return
    code = await svc.db.aio(svc.accounts.issue_code, member)
    settings = await svc.db.aio(svc.db.get_settings, "twilio.")
    text = f"Your Sudo password reset code is {code}. If you did not ask for it, ignore this."
    await twilio.send_whatsapp(settings, number, text)  # TwilioNotConfigured (503), TwilioError (502)


async def reset_by_code(svc: Any, number: str, code: str, password: str) -> Account:
    """Set a new password with the code sent to `number`; wrong codes are limited per number."""
    number = clean_number(number)
    attempt = svc.codes.reserve("too many wrong codes for this number", guess=number)
    member = await svc.db.aio(svc.numbers.member_of, number)
    try:
        account = await svc.accounts.reset_password(code_token(member or uuid.uuid4(), code), password)
    except NotFound:
        raise InvalidInput("wrong or expired code: ask for a new one") from None
    except InvalidInput:
        attempt.give_back()  # a password too short is no guess at the code
        raise
    svc.codes.forget("guess", number)
    return account
