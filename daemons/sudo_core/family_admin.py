"""What happens to a whole family: disabled, enabled again, or deleted for good.

Shared by sudo-api (the owner deletes their family; the admin disables, enables, deletes) and
`sudoctl`. A disabled family keeps everything, but its agent does not run: the provisioner
refuses to start it and evicts it, and its members are told so. Deleting first disables (so
nothing wakes the agent meanwhile), then has the provisioner remove the runtime and its data
volume, then deletes the family's row, which takes every other row of it along (members,
sessions, threads, devices and their tokens, numbers, invitations, WhatsApp messages).
"""

from __future__ import annotations

import time
import uuid

from sudo_core.accounts import InvalidInput, NotFound
from sudo_core.db import Database, Family
from sudo_core.provisioner_client import ProvisionerClient


def get(db: Database, family_id: uuid.UUID) -> Family:
    family = db.get_family(family_id)
    if family is None:
        raise NotFound(f"no family {family_id}")
    return family


async def set_disabled(
    db: Database, provisioner: ProvisionerClient, family_id: uuid.UUID, disabled: bool
) -> None:
    """Disable (and stop its runtime) or enable a family; its agent starts again on next use."""
    await db.aio(_mark, db, family_id, disabled)
    if disabled:
        await provisioner.stop(family_id)


async def delete(
    db: Database, provisioner: ProvisionerClient, family_id: uuid.UUID, confirm_name: str | None = None
) -> Family:
    """Delete the family and everything of it. `confirm_name`: what the owner typed, which must
    be the family's name (the admin and sudoctl name the family by id instead)."""
    family = await db.aio(get, db, family_id)
    if confirm_name is not None and " ".join(confirm_name.split()).casefold() != family.name.casefold():
        raise InvalidInput(f"type the family's name, {family.name}, to delete it")
    await db.aio(_mark, db, family_id, True)
    try:
        await provisioner.stop(family_id, purge=True)
    except BaseException:
        if family.disabled_at is None:  # nothing was deleted: the family is as it was
            await db.aio(_mark, db, family_id, False)
        raise
    await db.aio(db.delete_family, family_id)
    return family


def _mark(db: Database, family_id: uuid.UUID, disabled: bool) -> None:
    get(db, family_id)
    db.execute(
        "UPDATE families SET disabled_at = ? WHERE id = ?",
        (time.time() if disabled else None, str(family_id)),
    )
