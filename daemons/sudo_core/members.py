"""A family's members: invitations, children added by a parent, roles, removal, leaving.

Roles: the `owner` (who signed up), `adult`s and `child`ren. Owners and adults invite by link
(single use, valid `INVITE_TTL_SEC`, revocable) and add children, who log in with a username.
Only the owner changes roles, removes members and hands ownership to an adult; an adult may
leave (a child is removed by the owner). Removing a member ends their sessions, unlinks their
WhatsApp numbers and drops what was held to be sent to them, in one transaction (sudo-api also
cuts their open chat streams). Every method runs on the database thread, except the ones that hash a password.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

from sudo_core.accounts import (
    ACCOUNT_COLUMNS,
    ACCOUNT_FROM,
    ADULT,
    CHILD,
    OWNER,
    Account,
    Accounts,
    FamilyDisabled,
    InvalidInput,
    NotAllowed,
    NotFound,
    account_of,
    clean_email,
    clean_name,
    clean_username,
    token_hash,
)

INVITE_TTL_SEC = 7 * 86400


@dataclass(frozen=True)
class Invitation:
    id: str
    family_id: uuid.UUID | None
    """None: the admin's invitation to sign up a new family."""
    family_name: str | None
    role: str
    created_at: float
    expires_at: float


def require_parent(actor: Account) -> uuid.UUID:
    """The actor's family, if they are its owner or an adult and it is enabled."""
    if actor.family_id is None:
        raise NotAllowed("this account belongs to no family")
    if actor.family_disabled:
        raise FamilyDisabled()
    if not actor.is_parent:
        raise NotAllowed("only the family's parents (its owner and adults) can do this")
    return actor.family_id


def require_owner(actor: Account) -> uuid.UUID:
    family = require_parent(actor)
    if actor.role != OWNER:
        raise NotAllowed("only the family's owner can do this")
    return family


class Members:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.db = accounts.db

    def list(self, family: uuid.UUID) -> list[Account]:
        rows = self.db.query(
            f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.family_id = ?"
            " ORDER BY CASE a.role WHEN 'owner' THEN 0 WHEN 'adult' THEN 1 ELSE 2 END, a.created_at",
            (str(family),),
        )
        return [account_of(r) for r in rows]

    def member(self, actor: Account, member_id: str) -> Account:
        """A member of the actor's own family; anyone else is NotFound."""
        try:
            account = self.accounts.get(uuid.UUID(member_id))
        except ValueError:
            account = None
        if account is None or account.family_id is None or account.family_id != actor.family_id:
            raise NotFound("no member of your family with this id")
        return account

    # Invitations

    def invite(self, actor: Account | None, family: uuid.UUID | None = None) -> tuple[Invitation, str]:
        """A link's token: to join the actor's family as an adult, or (actor None, the host's
        admin) to sign up a new family. Returns the invitation and the token, shown only now."""
        role = OWNER
        if actor is not None:
            family, role = require_parent(actor), ADULT
        token, now = secrets.token_urlsafe(24), time.time()
        invitation = Invitation(uuid.uuid4().hex, family, None, role, now, now + INVITE_TTL_SEC)
        self.db.execute(
            "INSERT INTO invitations (id, token_hash, family_id, role, created_by, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                invitation.id,
                token_hash(token),
                str(family) if family else None,
                role,
                str(actor.id) if actor else None,
                now,
                invitation.expires_at,
            ),
        )
        return invitation, token

    def invitations(self, family: uuid.UUID | None) -> list[Invitation]:
        """The pending ones: of a family, or (None) the admin's sign-up invitations."""
        rows = self.db.query(
            "SELECT i.*, NULL AS family_name FROM invitations i WHERE i.family_id IS ?"
            " AND i.used_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > ? ORDER BY i.created_at",
            (str(family) if family else None, time.time()),
        )
        return [_invitation(r) for r in rows]

    def revoke(self, actor: Account | None, invitation_id: str) -> None:
        family = require_parent(actor) if actor is not None else None
        cur = self.db.execute(
            "UPDATE invitations SET revoked_at = ? WHERE id = ? AND family_id IS ? AND used_at IS NULL"
            " AND revoked_at IS NULL",
            (time.time(), invitation_id, str(family) if family else None),
        )
        if not cur.rowcount:
            raise NotFound("no pending invitation with this id")

    def invitation(self, token: str) -> Invitation:
        """A valid invitation by its link's token (what the join page shows)."""
        row = self.db.query_one(
            "SELECT i.*, f.name AS family_name, f.disabled_at FROM invitations i"
            " LEFT JOIN families f ON f.id = i.family_id WHERE i.token_hash = ? AND i.used_at IS NULL"
            " AND i.revoked_at IS NULL AND i.expires_at > ?",
            (token_hash(token), time.time()),
        )
        if row is None:
            raise NotFound("this invitation is used, revoked, expired or unknown: ask for a new one")
        if row["disabled_at"] is not None:
            raise FamilyDisabled()
        return _invitation(row)

    async def join(
        self, token: str, email: str, password: str, name: str, family_name: str | None = None
    ) -> Account:
        """Take an invitation: an adult of its family, or the owner of a new family named `family_name`."""
        invitation = await self.db.aio(self.invitation, token)
        email, name = clean_email(email), clean_name(name, "your name")
        if invitation.family_id is None:
            if self.accounts.signup == "closed":
                raise NotAllowed("this host takes no new families")
            family_name = clean_name(family_name or "", "the family name")
        hashed = await self.accounts.hash_password(password)
        return await self.db.aio(self._join, token, email, hashed, name, family_name)

    def _join(self, token: str, email: str, hashed: str, name: str, family_name: str | None) -> Account:
        with self.db.transaction():
            invitation = self.invitation(token)  # again, under the write lock: single use
            self.db.execute(
                "UPDATE invitations SET used_at = ? WHERE token_hash = ?", (time.time(), token_hash(token))
            )
            family = invitation.family_id
            if family is None:
                assert family_name is not None
                family = self.db.create_family(family_name).id
            return self.accounts.create(hashed, name, family, invitation.role, email=email)

    # Children, roles, ownership

    async def add_child(self, actor: Account, username: str, password: str, name: str) -> Account:
        family = require_parent(actor)
        username, name = clean_username(username), clean_name(name, "the child's name")
        hashed = await self.accounts.hash_password(password)

        def add() -> Account:
            with self.db.transaction():
                return self.accounts.create(hashed, name, family, CHILD, username=username)

        return await self.db.aio(add)

    def set_role(self, actor: Account, member_id: str, role: str) -> Account:
        require_owner(actor)
        member = self.member(actor, member_id)
        if role not in (ADULT, CHILD):
            raise InvalidInput("a role is adult or child (hand ownership over to make someone the owner)")
        if member.role == OWNER:
            raise InvalidInput("the owner's role changes only by handing ownership to an adult")
        if role == ADULT and not member.email:
            raise InvalidInput(f"{member.display_name} needs an email address before becoming an adult")
        self.db.execute("UPDATE accounts SET role = ? WHERE id = ?", (role, str(member.id)))
        return self.member(actor, member_id)

    def transfer_ownership(self, actor: Account, member_id: str) -> Account:
        family = require_owner(actor)
        member = self.member(actor, member_id)
        if member.role != ADULT:
            raise InvalidInput("ownership goes to an adult of the family")
        with self.db.transaction():
            self.db.execute("UPDATE accounts SET role = 'adult' WHERE id = ?", (str(actor.id),))
            self.db.execute(
                "UPDATE accounts SET role = 'owner' WHERE id = ? AND family_id = ?",
                (str(member.id), str(family)),
            )
        return self.member(actor, member_id)

    def issue_reset(self, actor: Account, member_id: str) -> str:
        """A reset link for a member who forgot their password; only the owner's resets the owner's."""
        require_parent(actor)
        member = self.member(actor, member_id)
        if member.id == actor.id:
            raise InvalidInput("change your own password on your account page")
        if member.role == OWNER and actor.role != OWNER:
            raise NotAllowed("only the owner can reset the owner's password")
        return self.accounts.issue_reset(member.id, actor.id)

    # Leaving

    def remove(self, actor: Account, member_id: str) -> Account:
        """The owner removes a member: their sessions, thread and numbers go with the account,
        and what was held to be sent to their numbers is dropped."""
        require_owner(actor)
        member = self.member(actor, member_id)
        if member.id == actor.id:
            raise InvalidInput(
                "the owner cannot remove themselves: hand ownership over, or delete the family"
            )
        self._delete_member(member)
        return member

    def leave(self, actor: Account) -> None:
        if actor.family_id is None:
            raise NotAllowed("this account belongs to no family")
        if actor.role == OWNER:
            raise InvalidInput(
                "the owner cannot leave: hand ownership to an adult first, or delete the family"
            )
        if actor.role == CHILD:
            raise NotAllowed("a child leaves the family when its owner removes them")
        self._delete_member(actor)

    def _delete_member(self, member: Account) -> None:
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM whatsapp_outbound WHERE status = 'held' AND family_id = ? AND number IN"
                " (SELECT number FROM whatsapp_numbers WHERE account_id = ?)",
                (str(member.family_id), str(member.id)),
            )
            # Sessions, the member's thread, numbers and reset links cascade with the account.
            self.db.execute("DELETE FROM accounts WHERE id = ?", (str(member.id),))


def _invitation(row) -> Invitation:
    family = row["family_id"]
    return Invitation(
        row["id"],
        uuid.UUID(family) if family else None,
        row["family_name"],
        row["role"],
        row["created_at"],
        row["expires_at"],
    )
