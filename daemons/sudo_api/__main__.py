"""sudo-api: the website, the /v1 API, accounts, chat, devices. It never touches Docker."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from sudo_core import config, logs
from sudo_core.accounts import Accounts
from sudo_core.credentials import SERVICE_TOKEN, host_secret, read_credential
from sudo_core.db import Database
from sudo_core.logs import fields
from sudo_core.metrics import host_port, start_metrics
from sudo_core.provisioner_client import ProvisionerClient
from sudo_core.systemd import Notifier

from .app import build_app, build_service_app
from .chat import Conversations
from .context import Services, code_limiter, pairing_limiter
from .devices import Devices
from .fleet import FleetRestart
from .limits import LoginLimiter, message_limiter
from .monitor import Monitor
from .numbers import Numbers
from .push import Pusher
from .watcher import RuntimeWatcher
from .whatsapp import WhatsApp

log = logging.getLogger("sudo-api")


async def listen(app: web.Application, address: str, keepalive_sec: float) -> web.AppRunner:
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=5, keepalive_timeout=keepalive_sec
    )
    await runner.setup()
    await web.TCPSite(runner, *host_port(address)).start()
    return runner


async def serve(settings: config.Settings) -> int:
    notifier = Notifier()
    db = Database(settings.core.database_path)
    secret = host_secret(settings.core.state_dir)
    provisioner = ProvisionerClient(
        settings.provisioner.socket, timeout=settings.provisioner.health_timeout_sec + 60
    )
    api = settings.api
    messages = message_limiter(api.family_messages_per_minute)
    devices = Devices(db, provisioner, api)
    push = Pusher(db, secret, api)
    services = Services(
        settings=settings,
        db=db,
        provisioner=provisioner,
        accounts=Accounts(db, api.session_days, api.signup),
        limiter=LoginLimiter(api.login_attempts, api.login_attempts_per_address, api.login_window_sec),
        chat=Conversations(db, provisioner, secret, api, messages, devices, push),
        devices=devices,
        fleet=FleetRestart(provisioner),
        numbers=Numbers(db),
        whatsapp=WhatsApp(db, provisioner, secret, api, messages),
        push=push,
        secret=secret,
        service_token=read_credential(SERVICE_TOKEN, settings.core.state_dir, generate=True) or "",
        pairing=pairing_limiter(api),
        codes=code_limiter(api),
    )
    runner = await listen(build_app(services), api.listen, api.idle_timeout_sec)
    # The voice bridge's lookups (every family's runtime address and key): loopback only.
    service_runner = await listen(build_service_app(services), api.service_listen, api.idle_timeout_sec)
    monitor = Monitor(settings, db, provisioner)
    monitor.start()
    metrics_runner = await start_metrics(api.metrics)
    await services.chat.start()
    watcher = RuntimeWatcher(provisioner, api, services.chat.follow)
    watcher.start()
    await services.whatsapp.start()
    services.devices.start()

    async with notifier.serving(f"serving on {api.listen}") as stop:
        log.info(f"sudo-api on {api.listen}", extra=fields(address=api.listen))
        log.info(
            f"sudo-api's service lookups on {api.service_listen}",
            extra=fields(address=api.service_listen),
        )
        if not await db.aio(services.accounts.has_admin):
            log.warning(
                f"this host has no admin yet: create it at /setup?token={services.setup_token}"
                f" (here: http://{api.listen}/setup?token={services.setup_token}),"
                " or with `sudoctl create-admin`"
            )
        await stop.wait()

    notifier.status("finishing replies in progress")
    log.info("stopping: finishing replies in progress")
    await watcher.stop()
    await services.chat.stop()  # pages stay connected meanwhile, so the replies still reach them
    await push.stop()
    await runner.cleanup()
    await service_runner.cleanup()
    await metrics_runner.cleanup()
    await monitor.stop()
    await services.whatsapp.stop()
    await services.devices.stop()
    await services.fleet.stop()
    await services.image.stop()
    await provisioner.close()
    db.close()
    return 0


def main() -> None:
    settings = config.load_or_exit("sudo-api")
    logs.setup("sudo-api", settings.core.log_level)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
