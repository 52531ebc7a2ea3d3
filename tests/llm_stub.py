"""A stand-in for the LLM provider (the one external party the tests replace).

It speaks the OpenAI chat-completions protocol as providers do: `GET /v1/models`,
`POST /v1/chat/completions` with or without `stream: true` (server-sent events of
`chat.completion.chunk` objects ending in `data: [DONE]`), and OpenAI-shaped 401 errors when
the bearer key is not one of those in `--keys` (read per request, so tests
can rotate keys). Every completion request is appended to a
JSON-lines log so tests can assert what reached the provider (which key, which model, what
the agent remembered).

Its answer is "stub says: <the last user message>"; a user message containing `[slow:N]`
makes it wait N seconds first, to hold a request in flight; `[drip:S]` makes it wait S seconds
between streamed words, so a reply is seen being written.

    python tests/llm_stub.py --port-file PATH --log PATH [--keys PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

from aiohttp import web

MODEL = "stub-model"


def last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def chunk(completion_id: str, model: str, delta: dict, finish: str | None) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def build_app(log_path: Path, keys_path: Path | None) -> web.Application:
    def record(entry: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def unauthorized(request: web.Request) -> web.Response | None:
        if keys_path is None or not keys_path.exists():
            return None
        allowed = {f"Bearer {k}" for k in keys_path.read_text().split()}
        if request.headers.get("Authorization") not in allowed:
            return web.json_response(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        return None

    async def models(request: web.Request) -> web.Response:
        return unauthorized(request) or web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "stub"}]}
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages", [])
        text = last_user_text(messages)
        record(
            {
                "authorization": request.headers.get("Authorization"),
                "model": body.get("model"),
                "stream": bool(body.get("stream")),
                "last_user": text,
                # the conversation the agent sent along: what it remembers of the family
                "user_messages": [str(m.get("content")) for m in messages if m.get("role") == "user"],
                "at": time.time(),
            }
        )
        if denied := unauthorized(request):
            return denied
        if slow := re.search(r"\[slow:(\d+(?:\.\d+)?)\]", text):
            await asyncio.sleep(float(slow.group(1)))
        answer = f"stub says: {text}"
        completion_id = f"chatcmpl-{int(time.time() * 1000)}"
        model = body.get("model") or MODEL
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk(completion_id, model, {"role": "assistant", "content": ""}, None))
        drip = re.search(r"\[drip:(\d+(?:\.\d+)?)\]", text)
        for word in re.findall(r"\S+\s*", answer):
            await response.write(chunk(completion_id, model, {"content": word}, None))
            if drip:
                await asyncio.sleep(float(drip.group(1)))
        await response.write(chunk(completion_id, model, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--keys", type=Path, help="file of accepted keys, one per line")
    args = parser.parse_args()
    runner = web.AppRunner(build_app(args.log, args.keys))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    args.port_file.write_text(str(port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
