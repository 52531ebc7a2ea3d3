"""sudo-api's services in process, on a real database and with no provisioner behind its socket:
for the tests of pages and routes that wake no agent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from sudo_api.chat import Conversations
from sudo_api.context import Services
from sudo_api.devices import Devices
from sudo_api.fleet import FleetRestart
from sudo_api.limits import LoginLimiter, message_limiter
from sudo_api.numbers import Numbers
from sudo_api.push import Pusher
from sudo_api.whatsapp import WhatsApp
from sudo_core.accounts import Accounts
from sudo_core.config import CoreSettings, Settings
from sudo_core.db import Database
from sudo_core.provisioner_client import ProvisionerClient


@contextlib.asynccontextmanager
async def offline_services(directory: Path, service_token: str) -> AsyncIterator[Services]:
    settings = Settings(core=CoreSettings(state_dir=directory))
    db = Database(settings.core.database_path)
    provisioner = ProvisionerClient(directory / "nobody.sock")
    messages = message_limiter(settings.api.family_messages_per_minute)
    devices = Devices(db, provisioner, settings.api)
    push = Pusher(db, b"secret", settings.api)
    services = Services(
        settings=settings,
        db=db,
        provisioner=provisioner,
        accounts=Accounts(db, 1),
        limiter=LoginLimiter(5, 50, 300),
        chat=Conversations(db, provisioner, b"secret", settings.api, messages, devices, push),
        devices=devices,
        fleet=FleetRestart(provisioner),
        numbers=Numbers(db),
        whatsapp=WhatsApp(db, provisioner, b"secret", settings.api, messages),
        push=push,
        secret=b"secret",
        service_token=service_token,
    )
    try:
        yield services
    finally:
        await services.chat.stop()
        await push.stop()
        await services.whatsapp.stop()
        await provisioner.close()
        db.close()
