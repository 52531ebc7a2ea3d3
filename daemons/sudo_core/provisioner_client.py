"""Client for the provisioner's HTTP API on its unix socket: the only way other daemons reach Docker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


class ProvisionerError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"provisioner answered {status}: {body.get('error', body)}")
        self.status = status
        self.body = body


class ProvisionerClient:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        self._session = aiohttp.ClientSession(
            # A connection per request: the provisioner exits when idle and restarts at any
            # time, so a pooled connection would often be one it already closed.
            connector=aiohttp.UnixConnector(path=str(socket_path), force_close=True),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def __aenter__(self) -> ProvisionerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._session.request(method, f"http://provisioner{path}", **kwargs) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ProvisionerError(resp.status, body if isinstance(body, dict) else {})
            return body

    async def ensure(self, family: uuid.UUID) -> dict[str, Any]:
        return await self._call("POST", f"/v1/runtimes/{family}/ensure")

    async def get(self, family: uuid.UUID) -> dict[str, Any]:
        return await self._call("GET", f"/v1/runtimes/{family}")

    async def list(self, stats: bool = False) -> list[dict[str, Any]]:
        """Every runtime; with stats, each running one's memory_bytes (slower: a sample each)."""
        params = {"stats": "true"} if stats else {}
        return (await self._call("GET", "/v1/runtimes", params=params))["runtimes"]

    async def stop(self, family: uuid.UUID, purge: bool = False) -> dict[str, Any]:
        params = {"purge": "true"} if purge else {}
        return await self._call("DELETE", f"/v1/runtimes/{family}", params=params)

    async def evict_idle(self, idle_sec: float | None = None) -> dict[str, Any]:
        body = {} if idle_sec is None else {"idle_sec": idle_sec}
        return await self._call("POST", "/v1/runtimes/evict-idle", json=body)

    async def reconcile(self) -> dict[str, Any]:
        return await self._call("POST", "/v1/runtimes/reconcile")

    async def restart_all(self) -> AsyncIterator[dict[str, Any]]:
        """Progress events as the provisioner streams them (NDJSON), ending with a "done" event."""
        url = "http://provisioner/v1/runtimes/restart-all"
        async with self._session.post(url) as resp:
            if resp.status >= 400:
                raise ProvisionerError(resp.status, await resp.json(content_type=None))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
