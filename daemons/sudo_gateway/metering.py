"""A family's use of the provider, read off its answers as they pass through the gateway.

The provider counts the tokens of each answer in its `usage`: in a plain answer's JSON, and in a
streamed answer's last event when the request asked for it (`stream_options.include_usage`,
which the gateway adds). The answer goes on to the family byte for byte, compressed as the
provider sent it; the meter reads a decompressed copy of it on the side.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from aiohttp import web

KEEP = 1 << 20
"""Bytes of an answer kept to read its usage: a plain answer whole, a streamed one's tail."""
TAIL = 64 << 10


class UsageMeter:
    def __init__(self) -> None:
        self._decompress: Any = None
        self._unreadable = False
        self._body = bytearray()

    def start(self, content_encoding: str) -> None:
        encoding = content_encoding.strip().lower()
        if encoding in ("gzip", "deflate"):
            self._decompress = zlib.decompressobj(zlib.MAX_WBITS | 32)  # either, by its header
        elif encoding not in ("", "identity"):
            self._unreadable = True  # br, zstd: passed on, not metered

    def feed(self, chunk: bytes) -> None:
        if self._unreadable:
            return
        try:
            data = self._decompress.decompress(chunk) if self._decompress else chunk
        except zlib.error:
            self._unreadable = True
            return
        self._body += data
        if len(self._body) > KEEP:
            del self._body[:-TAIL]

    def usage(self) -> tuple[int, int] | None:
        """(tokens in, tokens out) of the answer, if the provider said."""
        if self._unreadable or not self._body:
            return None
        text = self._body.decode(errors="replace")
        try:
            found = [json.loads(text)]
        except ValueError:  # a stream: its events' data, the last usage wins
            found = []
            for line in text.splitlines():
                if line.startswith("data:") and '"usage"' in line:
                    try:
                        found.append(json.loads(line[5:]))
                    except ValueError:
                        continue
        for event in reversed(found):
            usage = event.get("usage") if isinstance(event, dict) else None
            if isinstance(usage, dict):
                tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
                if isinstance(tokens_in, int) and isinstance(tokens_out, int):
                    return tokens_in, tokens_out
        return None


def budget_spent_answer(body: dict[str, Any], budget: int) -> web.Response:
    """What the family's agent gets instead of an answer once the day's budget is spent: an
    answer, in the shape it asked for, that says so (it passes it on to the family)."""
    text = (
        f"Your family has used today's share of the assistant ({budget:,} tokens). "
        "It answers again tomorrow (UTC); the host's admin can raise the share."
    )
    model = str(body.get("model") or "sudo")
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-budget",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    lines = [
        "data: "
        + json.dumps({"id": "chatcmpl-budget", "object": "chat.completion.chunk", "model": model} | e)
        for e in events
    ]
    return web.Response(text="\n\n".join([*lines, "data: [DONE]"]) + "\n\n", content_type="text/event-stream")
