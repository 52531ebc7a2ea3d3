"""sudo-gateway: the one door from family containers to the LLM provider (see gateway.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys

from aiohttp import web

from sudo_core import config, logs
from sudo_core.credentials import host_secret
from sudo_core.db import Database
from sudo_core.logs import fields
from sudo_core.systemd import Notifier

from .gateway import Gateway, build_app, build_metrics_app

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
    runners = [web.AppRunner(build_app(gateway), handle_signals=False)]
    await runners[0].setup()
    host, port = settings.runtime.host_address, settings.gateway.port
    await web.SockSite(runners[0], bind_freely(host, port)).start()
    if settings.gateway.metrics:
        runners.append(web.AppRunner(build_metrics_app(), handle_signals=False))
        await runners[1].setup()
        m_host, _, m_port = settings.gateway.metrics.rpartition(":")
        await web.TCPSite(runners[1], m_host, int(m_port)).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier.ready(f"serving family runtimes on {host}:{port}")
    log.info(f"LLM gateway on {host}:{port}", extra=fields(address=f"{host}:{port}"))
    watchdog = asyncio.create_task(notifier.watchdog())
    await stop.wait()
    notifier.stopping()
    watchdog.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
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
