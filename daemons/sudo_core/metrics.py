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
