"""A stand-in for the LLM provider (the one external party the tests replace).

It speaks the OpenAI chat-completions protocol as providers do: `GET /v1/models`,
`POST /v1/chat/completions` with or without `stream: true` (server-sent events of
`chat.completion.chunk` objects ending in `data: [DONE]`; with `stream_options.include_usage`
a last chunk of no choices carries `usage`, as OpenAI's; a plain answer carries it always; a
token is a word), and OpenAI-shaped 401 errors when
the bearer key is not one of those in `--keys` (read per request, so tests
can rotate keys). Every completion request is appended to a
JSON-lines log so tests can assert what reached the provider (which key, which model, what
the agent remembered).

Its answer is "stub says: <the last user message>", or, for a user message containing
`[answer:NAME]`, the text that `POST /_stub/answers {"name": NAME, "text": ...}` gave that name
(a test's own answer, written as a model would: Markdown, say); a user message containing `[slow:N]`
makes it wait N seconds first, to hold a request in flight; `[drip:S]` makes it wait S seconds
between streamed words, so a reply is seen being written. Spoken messages cannot carry those
marks: `POST /_stub/delay {"seconds": N}` makes every answer wait N seconds until set back to 0.
`POST /_stub/look-for {"texts": [...]}` makes each completion entry list, as `found`, those texts
that appear anywhere in the request's messages, the system prompt included (where Hermes puts
the agent's memory), without logging the prompt itself.

A user message's image parts (OpenAI's `image_url` content parts, as vision models take them)
are logged as `images`: each data: URL's media type, size and sha256, so tests can tell that a
photo reached the model byte for byte.

It also transcribes speech as OpenAI does: `POST /v1/audio/transcriptions`, multipart fields
`file` and `model`, optional `response_format` (`json`, the default, gives `{"text": ...}`;
`text` a plain-text body; `verbose_json` adds `language` and `duration`), with the same key
check. Once a test has said what may be spoken, `POST /_stub/phrases {"phrases": [...]}` (as a
real provider takes a prompt of expected words), audio (any container PyAV decodes: WhatsApp's
ogg, a browser's webm, wav) is heard by a real offline recogniser, pocketsphinx's US English
model with those sentences as its grammar, of which it must hear the one spoken (its general
language model hears synthetic speech too poorly to test with). Otherwise, and for bytes that
are no audio, the file is named instead, "voice note <first 12 hex of the file's sha256> <N>
bytes", which shows the tests that the file arrived intact; each
request is logged too (`path`, `bytes`, `sha12`, `filename`, `text`). Completion entries carry
`path` "/v1/chat/completions".

And it speaks: `POST /v1/audio/speech` (JSON `model`, `input`, `voice`, `response_format`
`pcm` (24 kHz mono S16_LE, OpenAI's), `wav` or `mp3`... of which it makes `pcm` and `wav`),
with real speech from espeak-ng, so what a client plays can be measured; logged with `input`.

    python tests/llm_stub.py --port-file PATH --log PATH [--keys PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import re
import subprocess
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


def content_text(content: object) -> str:
    """A message's words: its text parts, without the bytes of its images."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def image_parts(messages: list[dict]) -> list[dict]:
    """The images of the user messages (OpenAI `image_url` parts with a data: URL): type, size, sha256."""
    images = []
    for message in messages:
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for part in content:
            url = str((part.get("image_url") or {}).get("url", "")) if isinstance(part, dict) else ""
            if part.get("type") == "image_url" and url.startswith("data:"):
                header, _, data = url.partition(",")
                raw = base64.b64decode(data)
                kind = header.removeprefix("data:").split(";")[0]
                images.append({"type": kind, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
    return images


def audio_pcm(audio: bytes) -> bytes | None:
    """Audio decoded by PyAV (FFmpeg) to 16 kHz mono S16_LE, the recogniser's; None: not audio."""
    import av

    pcm = bytearray()
    try:
        with av.open(io.BytesIO(audio)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm += out.to_ndarray().tobytes()
            for out in resampler.resample(None):
                pcm += out.to_ndarray().tobytes()
    except (av.error.FFmpegError, IndexError, ValueError):
        return None
    return bytes(pcm) or None


def recognise(pcm: bytes, phrases: list[str]) -> str:
    """What pocketsphinx hears in 16 kHz mono S16_LE: one of `phrases` (its grammar) if given,
    else anything its general language model knows. The clip is framed by a faint noise floor,
    as a microphone's: it needs quiet around an utterance, and digital silence cuts its end."""
    import numpy as np
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="ERROR")
    if phrases:
        words = " | ".join(re.sub(r"[^a-z' ]", "", p.lower()) for p in phrases)
        decoder.add_jsgf_string("phrases", f"#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = {words};")
        decoder.activate_search("phrases")
    noise = np.random.default_rng(0).normal(0, 5, 24000).astype(np.int16).tobytes()
    decoder.start_utt()
    decoder.process_raw(noise[:16000] + pcm + noise[16000:], full_utt=True)  # 0.5 s, then 1 s
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.strip() if hyp else ""


def chunk(completion_id: str, model: str, delta: dict, finish: str | None) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def build_app(log_path: Path, keys_path: Path | None) -> web.Application:
    delay = {"seconds": 0.0}
    wanted: list[str] = []
    phrases: list[str] = []
    answers: dict[str, str] = {}

    def record(entry: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def unauthorized(request: web.Request) -> web.Response | None:
        if keys_path is None or not keys_path.exists():
            return None
        allowed = {f"Bearer {k}" for k in keys_path.read_text().split()}
        if request.headers.get("Authorization") not in allowed:
            return openai_error(401, "Incorrect API key provided", "invalid_api_key")
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
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "model": body.get("model"),
                "stream": bool(body.get("stream")),
                "last_user": text,
                # the conversation the agent sent along: what it remembers of the family
                "user_messages": [
                    content_text(m.get("content")) for m in messages if m.get("role") == "user"
                ],
                "images": image_parts(messages),
                # who the agent was told is speaking: Hermes writes it into the system prompt
                "speaker": next(
                    (
                        line
                        for m in messages
                        if m.get("role") == "system"
                        for line in str(m.get("content")).splitlines()
                        if line.startswith("**User:**")
                    ),
                    None,
                ),
                "found": [t for t in wanted if any(t in content_text(m.get("content")) for m in messages)],
                "at": time.time(),
            }
        )
        if denied := unauthorized(request):
            return denied
        if slow := re.search(r"\[slow:(\d+(?:\.\d+)?)\]", text):
            await asyncio.sleep(float(slow.group(1)))
        await asyncio.sleep(delay["seconds"])
        named = re.search(r"\[answer:([\w-]+)\]", text)
        answer = answers[named.group(1)] if named and named.group(1) in answers else f"stub says: {text}"
        completion_id = f"chatcmpl-{int(time.time() * 1000)}"
        model = body.get("model") or MODEL
        # Tokens as a provider counts them, roughly: a word each.
        prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(answer.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
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
                    "usage": usage,
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
        if (body.get("stream_options") or {}).get("include_usage"):  # as OpenAI: a last chunk
            last = {"id": completion_id, "object": "chat.completion.chunk", "model": model, "choices": []}
            await response.write(f"data: {json.dumps(last | {'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        upload = upload if isinstance(upload, web.FileField) else None
        audio = upload.file.read() if upload else b""
        sha12 = hashlib.sha256(audio).hexdigest()[:12]
        model = form.get("model")
        pcm = await asyncio.to_thread(audio_pcm, audio) if upload and phrases else None
        if pcm is None:
            text = f"voice note {sha12} {len(audio)} bytes"
        else:
            text = await asyncio.to_thread(recognise, pcm, list(phrases))
        record(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "model": model,
                "bytes": len(audio),
                "sha12": sha12 if upload else None,
                "filename": upload.filename if upload else None,
                "text": text,
                # what readers of completion entries filter on
                "last_user": "",
                "user_messages": [],
                "at": time.time(),
            }
        )
        if denied := unauthorized(request):
            return denied
        if upload is None:
            return openai_error(
                400, "Missing required parameter: 'file'.", "missing_required_parameter", "file"
            )
        if not model:
            return openai_error(
                400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"
            )
        response_format = form.get("response_format", "json")
        if response_format == "json":
            return web.json_response({"text": text})
        if response_format == "text":
            return web.Response(text=text, content_type="text/plain")
        if response_format == "verbose_json":
            return web.json_response({"text": text, "language": "english", "duration": 0.0})
        return openai_error(
            400, f"response_format {response_format!r} is not supported by the stub", None, "response_format"
        )

    async def speech(request: web.Request) -> web.Response:
        body = await request.json()
        record(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "at": time.time(),
                **body,
            }
        )
        if denied := unauthorized(request):
            return denied
        text, response_format = body.get("input"), body.get("response_format", "mp3")
        if not isinstance(text, str) or not text or not body.get("model"):
            return openai_error(400, "'input' and 'model' are required.", "missing_required_parameter")
        if response_format not in ("pcm", "wav"):
            return openai_error(400, f"the stub makes pcm and wav, not {response_format}", None)
        wav = await asyncio.to_thread(
            lambda: subprocess.run(
                ["espeak-ng", "--stdin", "--stdout"], input=text.encode(), capture_output=True
            )
        )
        to = ["-t", "raw"] if response_format == "pcm" else ["-t", "wav"]
        audio = await asyncio.to_thread(
            lambda: subprocess.run(
                ["sox", "-t", "wav", "-", *to, "-r", "24000", "-e", "signed", "-b", "16", "-c", "1", "-"],
                input=wav.stdout,
                capture_output=True,
            )
        )
        return web.Response(
            body=audio.stdout, content_type="audio/pcm" if response_format == "pcm" else "audio/wav"
        )

    async def set_delay(request: web.Request) -> web.Response:
        delay["seconds"] = float((await request.json())["seconds"])
        return web.json_response(delay)

    async def set_answer(request: web.Request) -> web.Response:
        body = await request.json()
        answers[str(body["name"])] = str(body["text"])
        return web.json_response({"name": body["name"]})

    async def set_phrases(request: web.Request) -> web.Response:
        phrases[:] = [str(p) for p in (await request.json())["phrases"]]
        return web.json_response({"phrases": phrases})

    async def look_for(request: web.Request) -> web.Response:
        wanted[:] = [str(t) for t in (await request.json())["texts"]]
        return web.json_response({"texts": wanted})

    app = web.Application(client_max_size=32 * 1024 * 1024)  # OpenAI takes audio files up to 25 MB
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/_stub/delay", set_delay)
    app.router.add_post("/_stub/look-for", look_for)
    app.router.add_post("/_stub/answers", set_answer)
    app.router.add_post("/_stub/phrases", set_phrases)
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
