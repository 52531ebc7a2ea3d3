"""Prometheus exposition, shared by every daemon's HTTP app."""

from __future__ import annotations

import prometheus_client
from aiohttp import web


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's counters, gauges and histograms."""
    return web.Response(
        body=prometheus_client.generate_latest(),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


def host_port(address: str) -> tuple[str, int]:
    """A "host:port" setting (an IPv6 host may be bracketed) as what a TCP listener takes."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start_metrics(address: str) -> web.AppRunner:
    """Serve GET /metrics on its own listener, kept off the public port; cleanup() stops it."""
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *host_port(address)).start()
    return runner
