"""The LLM gateway: authenticates a family's key, swaps in the provider's, streams the answer.

A family's Hermes holds only its own gateway key (HMAC-derived, names the family). The
provider key lives on the host alone and is read per request, so an admin rotating it restarts
no container. Each request in flight holds a lease on its family's runtime, so the reaper never
evicts an agent in the middle of thinking.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from sudo_core import config
from sudo_core.credentials import LLM_API_KEY, read_credential
from sudo_core.db import Database
from sudo_core.families import family_of_llm_key
from sudo_core.logs import fields

log = logging.getLogger(__name__)
# Not forwarded: hop-by-hop headers, and the length (the answer is re-chunked as it streams).
# Content-Encoding is kept: the body passes through undecoded (auto_decompress=False).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}

REQUESTS = Counter("sudo_gateway_requests_total", "LLM requests", ["status"])
FIRST_BYTE = Histogram("sudo_gateway_upstream_first_byte_seconds", "Provider time to first byte")
IN_FLIGHT = Gauge("sudo_gateway_in_flight", "LLM requests in flight")


@dataclass(frozen=True)
class Upstream:
    base_url: str
    model: str
    api_key: str | None


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    """Errors in the provider's own shape, so Hermes reports them as it would the provider's."""
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


class Gateway:
    def __init__(self, settings: config.Settings, db: Database, secret: bytes) -> None:
        self.settings = settings
        self.db = db
        self._secret = secret
        self._known: dict[uuid.UUID, float] = {}  # family -> until when its existence is cached
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.gateway.request_timeout_sec, sock_connect=10),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self._http.close()

    def upstream(self) -> Upstream:
        """Admin settings (database) first, then sudo.toml; the key from the database or a credential."""
        admin = self.db.get_settings("llm.")
        return Upstream(
            base_url=(admin.get("llm.base_url") or self.settings.llm.base_url).rstrip("/"),
            model=admin.get("llm.model") or self.settings.llm.model,
            api_key=admin.get("llm.api_key") or read_credential(LLM_API_KEY, self.settings.core.state_dir),
        )

    async def authenticate(self, request: web.Request) -> uuid.UUID | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        family = family_of_llm_key(self._secret, key.strip()) if scheme == "Bearer" else None
        if family is None:
            return None
        if self._known.get(family, 0) < time.monotonic():
            if await self.db.aio(self.db.get_family, family) is None:
                return None  # a deleted family's key stops working
            self._known[family] = time.monotonic() + 30
        return family

    async def models(self, request: web.Request) -> web.Response:
        if await self.authenticate(request) is None:
            return openai_error(401, "invalid gateway key", "authentication_error")
        upstream = await self.db.aio(self.upstream)
        model = {"id": upstream.model or "default", "object": "model", "owned_by": "sudo"}
        wanted = request.match_info.get("model")
        if wanted is None:
            return web.json_response({"object": "list", "data": [model]})
        if wanted != model["id"]:
            return openai_error(404, f"model {wanted!r} is not offered here")
        return web.json_response(model)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        family = await self.authenticate(request)
        if family is None:
            REQUESTS.labels("401").inc()
            return openai_error(401, "invalid gateway key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return openai_error(400, "the body must be a JSON object")
        upstream = await self.db.aio(self.upstream)
        if not upstream.base_url:
            REQUESTS.labels("503").inc()
            return openai_error(
                503,
                "no LLM provider is configured: an admin sets it in /admin/settings "
                "(or llm.base_url in sudo.toml)",
                "server_error",
            )
        if upstream.model:
            body["model"] = upstream.model  # families use the model the admin chose
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        lease = await self.db.aio(
            self.db.acquire_lease, family, "gateway", self.settings.gateway.request_timeout_sec
        )
        IN_FLIGHT.inc()
        started = time.monotonic()
        try:
            return await self._forward(request, f"{upstream.base_url}/chat/completions", body, headers)
        finally:
            IN_FLIGHT.dec()
            await self.db.aio(self.db.release_lease, lease)
            log.debug("chat completion", extra=fields(family=family, seconds=time.monotonic() - started))

    async def _forward(
        self, request: web.Request, url: str, body: dict, headers: dict[str, str]
    ) -> web.StreamResponse:
        started = time.monotonic()
        response: web.StreamResponse | None = None
        try:
            async with self._http.post(url, json=body, headers=headers) as upstream:
                FIRST_BYTE.observe(time.monotonic() - started)
                REQUESTS.labels(str(upstream.status)).inc()
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(f"LLM provider failed: {exc!r}")
            if response is not None and response.prepared:
                # Mid-answer: drop the connection so the agent sees a broken stream, never a
                # short answer that looks complete.
                raise
            REQUESTS.labels("502").inc()
            return openai_error(502, f"the LLM provider could not be reached: {exc}", "server_error")


async def not_found(request: web.Request) -> web.Response:
    return openai_error(404, f"{request.method} {request.path} is not served by the Sudo gateway")


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", gateway.chat_completions)
    app.router.add_get("/v1/models", gateway.models)
    app.router.add_get("/v1/models/{model:.+}", gateway.models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
