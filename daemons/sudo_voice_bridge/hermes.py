"""The family's own agent as the voice session's LLM.

Every turn goes to the family's Hermes api_server (`/v1/chat/completions`, streamed) with the
family's key, under one Hermes session per voice conversation (`X-Hermes-Session-Id`): Hermes
keeps the history in its own state.db and the memory is the same one chat and WhatsApp use, so
only the newest words are sent. The bridge never leaves silence: a slow agent makes it say it is
still thinking, an unreachable one makes it say so, and a runtime that moved (recreated, evicted)
is woken again once before it gives up.

Where the agent answers is asked of sudo-api for every turn, and the container there must prove
it holds the family's key (`FamilyRuntime.for_turn`) before the family's words and key are sent:
Docker hands a freed address to the next container, which may be another family's. The asking
and the proof start as the family starts speaking (`prepare_turn`), so that the turn does not
wait for them once they stop; a proof older than PROOF_FRESH_SEC is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from prometheus_client import Counter, Histogram

from sudo_core.families import identity_proof

from .sudo_api import Runtime, SudoApiError

log = logging.getLogger(__name__)

VOICE_PROMPT = (
    "You are speaking out loud through the family's home speaker, not writing. Answer in a few "
    "short spoken sentences of plain words: no markdown, lists, links, code or emoji. The home "
    "device is shared: the speaker is someone at home, maybe a child, whose name you are not told."
)
STILL_THINKING = "One moment, I'm still thinking. "
UNREACHABLE = "Sorry, I can't reach your assistant right now. Please try again in a minute."
CUT_OFF = "Sorry, I lost my train of thought. Please ask me again."
PROOF_FRESH_SEC = 30.0
"""The longest a turn uses a proof of where the agent answers made as the family began to speak."""

TURNS = Counter("sudo_voice_turns_total", "Voice turns answered by a family's agent", ["result"])
IMPOSTORS = Counter(
    "sudo_voice_wrong_family_total", "Turns held back: the family's address answered for another family"
)
FIRST_WORD = Histogram(
    "sudo_voice_agent_first_word_seconds",
    "From a turn sent to the family's agent to its first words",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)


class AgentUnavailable(RuntimeError):
    pass


class FamilyRuntime:
    """Where the family's agent answers, woken on first use and again when it stops answering."""

    def __init__(self, family: uuid.UUID, ensure: Callable[[uuid.UUID], Awaitable[Runtime]]) -> None:
        self.family = family
        self._ensure = ensure
        self._runtime: Runtime | None = None
        self._lock = asyncio.Lock()

    async def get(self, *, fresh: bool = False) -> Runtime:
        async with self._lock:
            if fresh or self._runtime is None:
                try:
                    self._runtime = await self._ensure(self.family)
                except SudoApiError as exc:
                    self._runtime = None
                    raise AgentUnavailable(str(exc)) from exc
            return self._runtime

    @property
    def known(self) -> Runtime | None:
        return self._runtime

    async def for_turn(self, http: aiohttp.ClientSession) -> Runtime:
        """Where the family's agent answers now, proven: the address is asked again (a runtime
        recreated since has another), and the container there answers a fresh challenge with
        the family's key, which is never sent to it before that."""
        runtime = await self.get(fresh=True)
        nonce = secrets.token_hex(16)
        try:
            async with http.get(
                runtime.identity_url, params={"nonce": nonce}, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentUnavailable(f"no proof of identity at {runtime.identity_url}: {exc!r}") from exc
        proof = body.get("proof") if isinstance(body, dict) else None
        if not isinstance(proof, str) or not hmac.compare_digest(
            proof, identity_proof(runtime.api_key, nonce)
        ):
            IMPOSTORS.inc()
            raise AgentUnavailable(f"{runtime.identity_url} answers for another family, not {self.family}")
        return runtime


class HermesLLM(llm.LLM):
    def __init__(
        self,
        runtime: FamilyRuntime,
        session_id: str,
        *,
        slow_reply_sec: float,
        reply_timeout_sec: float,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.session_id = session_id
        self.slow_reply_sec = slow_reply_sec
        self.reply_timeout_sec = reply_timeout_sec
        self._http: aiohttp.ClientSession | None = None
        self._proving: tuple[float, asyncio.Future[Runtime]] | None = None

    @property
    def model(self) -> str:
        return "hermes-agent"

    @property
    def provider(self) -> str:
        return "sudo"

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:  # made on first use, on the session's own event loop
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._http

    def prepare_turn(self) -> None:
        """The family started to speak: find and prove where its agent answers while they do."""
        if self._proving is None or self._proving[1].done():
            proving = asyncio.ensure_future(self.runtime.for_turn(self.http()))
            # A proof no turn takes leaves no "exception never retrieved" in the log.
            proving.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._proving = (time.monotonic(), proving)

    async def _proven(self) -> Runtime:
        """Where the agent answers, proven for this turn: as prepared, if that is fresh."""
        prepared, self._proving = self._proving, None
        if prepared is not None and time.monotonic() - prepared[0] < PROOF_FRESH_SEC:
            return await prepared[1]
        if prepared is not None:
            prepared[1].cancel()
        return await self.runtime.for_turn(self.http())

    async def aclose(self) -> None:
        if self._proving is not None:
            self._proving[1].cancel()
        if self._http is not None:
            await self._http.close()
        await super().aclose()

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _HermesStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    async def answer(self, text: str) -> AsyncIterator[str]:
        """The agent's answer to `text`, as it is written; what the bridge says instead on failure."""
        started = time.monotonic()
        said_anything = False
        try:
            async with asyncio.timeout(self.reply_timeout_sec):
                for attempt in (1, 2):
                    runtime = await (self._proven() if attempt == 1 else self.runtime.for_turn(self.http()))
                    try:
                        async for piece in self._with_patience(self._stream(runtime, text)):
                            if piece is not STILL_THINKING and not said_anything:
                                FIRST_WORD.observe(time.monotonic() - started)
                            said_anything = said_anything or piece is not STILL_THINKING
                            yield piece
                        TURNS.labels("answered").inc()
                        return
                    except AgentUnavailable as exc:
                        if said_anything or attempt == 2:
                            raise
                        log.info(f"family {self.runtime.family}: agent did not answer ({exc}); waking it")
        except (AgentUnavailable, TimeoutError) as exc:
            TURNS.labels("failed").inc()
            log.warning(f"family {self.runtime.family}: no answer from the agent: {exc!r}")
            yield CUT_OFF if said_anything else UNREACHABLE

    async def _with_patience(self, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
        """`pieces`, with STILL_THINKING first if the first of them is slow to come. Closing
        this closes `pieces`, so an interrupted answer hangs up on the agent."""
        async with contextlib.aclosing(pieces):  # type: ignore[type-var]
            first = asyncio.ensure_future(anext(pieces, None))
            try:
                done, _ = await asyncio.wait({first}, timeout=self.slow_reply_sec)
                if not done:
                    log.info(f"family {self.runtime.family}: no answer yet after {self.slow_reply_sec:g} s")
                    yield STILL_THINKING
                piece = await first
            finally:
                if not first.done():  # the turn was abandoned while the agent was thinking
                    first.cancel()
                    with contextlib.suppress(asyncio.CancelledError, AgentUnavailable):
                        await first
            while piece is not None:
                yield piece
                piece = await anext(pieces, None)

    async def _stream(self, runtime: Runtime, text: str) -> AsyncIterator[str]:
        body = {
            "model": "hermes-agent",
            "stream": True,
            "messages": [{"role": "system", "content": VOICE_PROMPT}, {"role": "user", "content": text}],
        }
        headers = {"Authorization": f"Bearer {runtime.api_key}", "X-Hermes-Session-Id": self.session_id}
        try:
            async with self.http().post(
                f"{runtime.url}/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status != 200:
                    raise AgentUnavailable(f"{resp.status} {(await resp.text())[:200]}")
                async for piece in sse_content(resp.content):
                    yield piece
        except aiohttp.ClientError as exc:
            raise AgentUnavailable(repr(exc)) from exc


async def sse_content(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The text of an OpenAI-style chat completion stream; Hermes's own events are skipped."""
    event, data = "", []
    async for raw in stream:
        line = raw.decode().rstrip("\r\n")
        if line:
            field, _, value = line.partition(":")
            if field == "event":
                event = value.strip()
            elif field == "data":
                data.append(value.removeprefix(" "))
            continue
        payload, kind = "\n".join(data), event
        event, data = "", []
        if kind not in ("", "message") or not payload:
            continue
        if payload == "[DONE]":
            return
        try:
            choices = json.loads(payload).get("choices") or [{}]
        except (ValueError, AttributeError):
            continue
        content = (choices[0].get("delta") or {}).get("content")
        if content:
            yield content
    raise AgentUnavailable("the answer broke off before it ended")


class _HermesStream(llm.LLMStream):
    async def _run(self) -> None:
        hermes: HermesLLM = self._llm  # type: ignore[assignment]
        text = latest_user_text(self._chat_ctx)
        request_id = uuid.uuid4().hex
        if not text:
            return
        async for piece in hermes.answer(text):
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )


def latest_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return (item.text_content or "").strip()
    return ""
