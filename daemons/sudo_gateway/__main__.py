"""sudo-gateway: the one door from family containers to the LLM provider (see gateway.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

from aiohttp import web

from sudo_core import config, logs
from sudo_core.credentials import host_secret
from sudo_core.db import Database
from sudo_core.logs import fields
from sudo_core.metrics import start_metrics
from sudo_core.systemd import Notifier

from .gateway import Gateway, build_app

log = logging.getLogger("sudo_gateway")
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def bind_freely(host: str, port: int) -> socket.socket:
    """Bind even before the runtime network exists: the provisioner creates its bridge later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((host, port))
    sock.listen(256)
    return sock


async def serve(settings: config.Settings) -> int:
    notifier = Notifier()
    db = Database(settings.core.database_path)
    gateway = Gateway(settings, db, host_secret(settings.core.state_dir))
    # The family containers are untrusted: a connection that sends no whole request in this
    # long is closed (aiohttp's runner would keep one an hour), so stalling ones cannot pile up.
    runners = [
        web.AppRunner(
            build_app(gateway), handle_signals=False, keepalive_timeout=settings.gateway.idle_timeout_sec
        )
    ]
    await runners[0].setup()
    host, port = settings.runtime.host_address, settings.gateway.port
    await web.SockSite(runners[0], bind_freely(host, port)).start()
    if settings.gateway.metrics:
        runners.append(await start_metrics(settings.gateway.metrics))

    async with notifier.serving(f"serving family runtimes on {host}:{port}") as stop:
        log.info(f"LLM gateway on {host}:{port}", extra=fields(address=f"{host}:{port}"))
        await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await gateway.close()
    db.close()
    return 0


def main() -> None:
    settings = config.load_or_exit("sudo-gateway")
    logs.setup("sudo-gateway", settings.core.log_level)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
