"""The gateway: the one host service a family's container reaches, with its family's key.

It serves the LLM (the provider's key swapped in, the answer streamed through), speech-to-text
for voice notes and the voice bridge, text-to-speech for the voice bridge (the same provider
unless the admin set another), and WhatsApp messages out
through Twilio (the admin's account; only to numbers the family linked).

A family's Hermes holds only its own gateway key (HMAC-derived, names the family). Provider and
Twilio credentials live on the host alone and are read per request, so an admin rotating them
restarts no container. Each LLM request in flight holds a lease on its family's runtime, so the
reaper never evicts an agent in the middle of thinking.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from sudo_core import config, host_settings, twilio, usage
from sudo_core.credentials import LLM_API_KEY, read_credential
from sudo_core.db import Database
from sudo_core.families import family_of_llm_key
from sudo_core.logs import fields
from sudo_core.whatsapp import OutboundStore, deliver

from .metering import UsageMeter, budget_spent_answer

log = logging.getLogger(__name__)
# The provider's response headers a family's agent gets: what it needs to read the answer (the
# body passes through undecoded: auto_decompress=False) and to back off. Nothing else: a proxy
# such as litellm adds its own (its address, the cost, the spend of its key across families),
# and a provider's cookies or organisation are the host's. The length never: the answer is
# re-chunked as it streams.
FORWARDED_HEADERS = {"content-type", "content-encoding", "cache-control", "retry-after", "x-request-id"}
FORWARDED_PREFIX = "x-ratelimit-"

REQUESTS = Counter("sudo_gateway_requests_total", "LLM requests", ["status"])
FIRST_BYTE = Histogram("sudo_gateway_upstream_first_byte_seconds", "Provider time to first byte")
IN_FLIGHT = Gauge("sudo_gateway_in_flight", "LLM requests in flight")
TRANSCRIPTIONS = Counter("sudo_gateway_transcriptions_total", "Speech-to-text requests", ["status"])
WHATSAPP = Counter("sudo_gateway_whatsapp_messages_total", "WhatsApp messages from agents", ["result"])
SPEECHES = Counter("sudo_gateway_speeches_total", "Text-to-speech requests", ["status"])
PROVIDER_ERRORS = Counter(
    "sudo_gateway_provider_errors_total",
    "The provider's failures: its HTTP error status, `unreachable`, or `cut` (an answer broken off)",
    ["status"],
)
REFUSED_BUSY = Counter("sudo_gateway_family_busy_total", "Refused: the family had too many in flight")
SPEECH_MODELS = {"stt": "whisper-1", "tts": "tts-1"}
COMPLETION_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "user",
    }
)
"""The fields of OpenAI's chat completion request a family's agent may send on (`n` is dropped)."""
"""The speech models asked for when the admin named none."""
MAX_SPEECH_INPUT = 4096
"""Characters of text one speech request may carry (OpenAI's own limit)."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Upstream:
    base_url: str
    model: str
    api_key: str | None


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    """Errors in the provider's own shape, so Hermes reports them as it would the provider's."""
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


class Gateway:
    def __init__(self, settings: config.Settings, db: Database, secret: bytes) -> None:
        self.settings = settings
        self.db = db
        self._secret = secret
        self._known: dict[uuid.UUID, float] = {}  # family -> until when its existence is cached
        self._in_flight: Tally[uuid.UUID] = Tally()
        self._http = aiohttp.ClientSession(
            # No cap on connections to the provider (aiohttp's default is 100, each held for a
            # whole streamed answer): gateway.family_in_flight bounds them per family, and a
            # provider past its quota answers 429 itself, which Hermes retries.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=settings.gateway.request_timeout_sec, sock_connect=10),
            auto_decompress=False,
        )
        self._twilio = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=10))

    async def close(self) -> None:
        await self._http.close()
        await self._twilio.close()

    def upstream(self) -> Upstream:
        """Admin settings (database) first, then sudo.toml; the key from the database, or the
        credential, which belongs to sudo.toml's provider and goes to no other."""
        admin = self.db.get_settings("llm.")
        base_url = (admin.get("llm.base_url") or self.settings.llm.base_url).rstrip("/")
        key = admin.get("llm.api_key")
        if not key and host_settings.same_origin(base_url, self.settings.llm.base_url):
            key = read_credential(LLM_API_KEY, self.settings.core.state_dir)
        return Upstream(
            base_url=base_url, model=admin.get("llm.model") or self.settings.llm.model, api_key=key
        )

    def speech_upstream(self, kind: str) -> Upstream:
        """The admin's speech-to-text ("stt") or text-to-speech ("tts") provider, else the LLM
        provider (most serve both). The LLM key stands in for a missing key of its own server only."""
        llm, admin = self.upstream(), self.db.get_settings(f"{kind}.")
        base_url = (admin.get(f"{kind}.base_url") or llm.base_url).rstrip("/")
        key = admin.get(f"{kind}.api_key") or (
            llm.api_key if host_settings.same_origin(base_url, llm.base_url) else ""
        )
        return Upstream(
            base_url=base_url, model=admin.get(f"{kind}.model") or SPEECH_MODELS[kind], api_key=key
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

    @web.middleware
    async def admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate the family (its id on `request["family"]`, None for a bad key, which
        each handler refuses in its own API's shape), and let at most gateway.family_in_flight
        requests of one family in at once, from its key checked to the answer's last byte."""
        family = request["family"] = await self.authenticate(request)
        if family is None:
            return await handler(request)
        if self._in_flight[family] >= self.settings.gateway.family_in_flight:
            REFUSED_BUSY.inc()
            response = openai_error(429, "too many requests of this family at once", "rate_limit_error")
            response.headers["Retry-After"] = "1"
            return response
        self._in_flight[family] += 1
        try:
            return await handler(request)
        finally:
            self._in_flight[family] -= 1
            if not self._in_flight[family]:
                del self._in_flight[family]

    async def models(self, request: web.Request) -> web.Response:
        if request["family"] is None:
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
        family = request["family"]
        if family is None:
            REQUESTS.labels("401").inc()
            return openai_error(401, "invalid gateway key", "authentication_error")
        try:
            body = await request.json()
        except (ValueError, RecursionError, LookupError):  # nested too deep; a charset Python lacks
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
        body = self.allowed_completion(body)
        if upstream.model:
            body["model"] = upstream.model  # families use the model the admin chose
        if (budget := await self.db.aio(usage.spent_budget, self.db, family)) is not None:
            REQUESTS.labels("budget").inc()
            return budget_spent_answer(body, budget)
        if body.get("stream"):  # the provider then counts the tokens in a last event
            options = body.get("stream_options")
            body["stream_options"] = (options if isinstance(options, dict) else {}) | {"include_usage": True}
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        lease = await self.db.aio(
            self.db.acquire_lease, family, "gateway", self.settings.gateway.request_timeout_sec
        )
        IN_FLIGHT.inc()
        started = time.monotonic()
        meter = UsageMeter()
        try:
            return await self._forward(request, f"{upstream.base_url}/chat/completions", body, headers, meter)
        finally:
            IN_FLIGHT.dec()
            await self.db.aio(self.db.release_lease, lease)
            if counted := meter.usage():
                await self.db.aio(usage.add, self.db, family, *counted)
            log.debug("chat completion", extra=fields(family=family, seconds=time.monotonic() - started))

    def allowed_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """What of a family's chat completion goes to the provider: OpenAI's own fields only (a
        provider's routing fields, such as fallback `models` or `provider` order, would get
        around the admin's model), one choice (`n`), and at most gateway.max_tokens."""
        kept = {k: v for k, v in body.items() if k in COMPLETION_FIELDS}
        for key in ("max_tokens", "max_completion_tokens"):
            if key in kept:
                asked = kept[key]
                ceiling = self.settings.gateway.max_tokens
                kept[key] = min(asked, ceiling) if isinstance(asked, int) and asked > 0 else ceiling
        return kept

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's `POST /v1/audio/transcriptions`: a voice note, multipart, to the provider."""
        if request["family"] is None:
            TRANSCRIPTIONS.labels("401").inc()
            return openai_error(401, "invalid gateway key", "authentication_error")
        upstream = await self.db.aio(self.speech_upstream, "stt")
        if not upstream.base_url:
            TRANSCRIPTIONS.labels("503").inc()
            return openai_error(503, "no speech-to-text provider is configured", "server_error")
        form = aiohttp.FormData()
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "model":
                    continue  # families use the model the admin chose
                if part.filename is None:  # a plain field (response_format, language, prompt...)
                    form.add_field(part.name or "", await part.text())
                else:
                    form.add_field(
                        part.name or "",
                        await part.read(),
                        filename=part.filename,
                        content_type=part.headers.get("Content-Type", "application/octet-stream"),
                    )
        except (ValueError, AssertionError, aiohttp.ClientError) as exc:
            TRANSCRIPTIONS.labels("400").inc()
            return openai_error(400, f"expected multipart/form-data with the audio file: {exc}")
        form.add_field("model", upstream.model)
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        response = await self._forward(request, f"{upstream.base_url}/audio/transcriptions", form, headers)
        TRANSCRIPTIONS.labels(str(response.status)).inc()
        return response

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's `POST /v1/audio/speech`: text to audio, for the voice bridge speaking a
        family's answer (it presents that family's key)."""
        if request["family"] is None:
            SPEECHES.labels("401").inc()
            return openai_error(401, "invalid gateway key", "authentication_error")
        try:
            body = await request.json()
        except (ValueError, RecursionError, LookupError):  # nested too deep; a charset Python lacks
            body = None
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SPEECH_INPUT:
            SPEECHES.labels("400").inc()
            return openai_error(400, f"expected JSON with 'input': 1 to {MAX_SPEECH_INPUT} characters")
        upstream = await self.db.aio(self.speech_upstream, "tts")
        if not upstream.base_url:
            SPEECHES.labels("503").inc()
            return openai_error(503, "no text-to-speech provider is configured", "server_error")
        allowed = {k: body[k] for k in ("voice", "response_format", "speed", "instructions") if k in body}
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        forwarded = allowed | {"input": text, "model": upstream.model}
        response = await self._forward(request, f"{upstream.base_url}/audio/speech", forwarded, headers)
        SPEECHES.labels(str(response.status)).inc()
        return response

    async def whatsapp_message(self, request: web.Request) -> web.Response:
        """One WhatsApp message from a family's agent to one of the family's linked numbers.

        `{"id", "to", "body"}`; the id makes a retried request send nothing twice. Answers
        201 sent to Twilio, 202 held (outside the window, no template), 200 already handled,
        429/5xx to retry later, 4xx refused for good.
        """
        family = request["family"]
        if family is None:
            return json_error(401, "invalid gateway key")
        try:
            body = await request.json()
            message_id, to, text = (
                str(body["id"]),
                str(body["to"]).removeprefix("whatsapp:"),
                str(body["body"]),
            )
        except (ValueError, KeyError, TypeError, RecursionError, LookupError):
            return json_error(400, "expected JSON with id, to and body")
        if not (0 < len(message_id) <= 100 and twilio.E164.match(to) and 0 < len(text) <= twilio.BODY_MAX):
            return json_error(
                400, f"id up to 100 characters, to in E.164 form, body 1 to {twilio.BODY_MAX} characters"
            )
        if not await self.db.aio(self._linked, family, to):
            WHATSAPP.labels("not_linked").inc()
            return json_error(403, "the agent writes only to numbers its family linked")
        try:
            account = twilio.Account.from_settings(await self.db.aio(self.db.get_settings, "twilio."))
        except twilio.TwilioNotConfigured as exc:
            WHATSAPP.labels("not_configured").inc()
            return json_error(503, str(exc))
        store = OutboundStore(self.db)
        message, mine = await self.db.aio(store.claim, f"{family.hex}:{message_id}", family, to, text)
        if not mine:
            if message.status == "sending":  # another request is sending it right now
                return json_error(503, "this message is being sent; ask again for its outcome")
            return web.json_response({"status": message.status, "sid": message.sid})
        result = await deliver(self._twilio, self.db, account, message)
        WHATSAPP.labels(result.message.status).inc()
        if result.status >= 400:
            log.warning(
                f"WhatsApp message {message.id} not sent: {result.message.error}",
                extra=fields(family=family, status=result.status),
            )
            return json_error(result.status, result.message.error or "Twilio refused the message")
        return web.json_response(
            {"status": result.message.status, "sid": result.message.sid}, status=result.status
        )

    def _linked(self, family: uuid.UUID, number: str) -> bool:
        return bool(
            self.db.query_one(
                "SELECT 1 FROM whatsapp_numbers"
                " WHERE family_id = ? AND number = ? AND verified_at IS NOT NULL",
                (str(family), number),
            )
        )

    async def _forward(
        self,
        request: web.Request,
        url: str,
        body: dict | aiohttp.FormData,
        headers: dict[str, str],
        meter: UsageMeter | None = None,
    ) -> web.StreamResponse:
        started = time.monotonic()
        response: web.StreamResponse | None = None
        payload = {"json": body} if isinstance(body, dict) else {"data": body}
        try:
            async with self._http.post(url, headers=headers, **payload) as upstream:
                FIRST_BYTE.observe(time.monotonic() - started)
                REQUESTS.labels(str(upstream.status)).inc()
                if upstream.status >= 400:
                    PROVIDER_ERRORS.labels(str(upstream.status)).inc()
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={k: v for k, v in upstream.headers.items() if forwarded(k)},
                )
                await response.prepare(request)
                if meter is not None and upstream.status == 200:
                    meter.start(upstream.headers.get("Content-Encoding", ""))
                else:
                    meter = None
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if meter is not None:
                        meter.feed(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(f"LLM provider failed: {exc!r}")
            if response is not None and response.prepared:
                # Mid-answer: drop the connection so the agent sees a broken stream, never a
                # short answer that looks complete.
                PROVIDER_ERRORS.labels("cut").inc()
                raise
            PROVIDER_ERRORS.labels("unreachable").inc()
            REQUESTS.labels("502").inc()
            return openai_error(502, f"the LLM provider could not be reached: {exc}", "server_error")


def forwarded(header: str) -> bool:
    name = header.lower()
    return name in FORWARDED_HEADERS or name.startswith(FORWARDED_PREFIX)


async def not_found(request: web.Request) -> web.Response:
    return openai_error(404, f"{request.method} {request.path} is not served by the Sudo gateway")


def build_app(gateway: Gateway) -> web.Application:
    # client_max_size: a 16 MiB voice note, multipart
    app = web.Application(client_max_size=24 * 1024 * 1024, middlewares=[gateway.admit])
    app.router.add_post("/v1/chat/completions", gateway.chat_completions)
    app.router.add_post("/v1/audio/transcriptions", gateway.transcriptions)
    app.router.add_post("/v1/audio/speech", gateway.speech)
    app.router.add_post("/v1/whatsapp/messages", gateway.whatsapp_message)
    app.router.add_get("/v1/models", gateway.models)
    app.router.add_get("/v1/models/{model:.+}", gateway.models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
