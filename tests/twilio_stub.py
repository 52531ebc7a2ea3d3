"""A stand-in for Twilio's REST API (an external service the tests cannot reach).

It answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` as Twilio does: form fields
`From`, `To` (`whatsapp:+E164` or `+E164`), and `Body`, `MediaUrl` (repeatable) or a template
(`ContentSid`, optional `ContentVariables` JSON), optional `StatusCallback`; HTTP basic auth with
the account SID and auth token; a 201 with the message resource (`sid` "SM" + 32 hex, `status`
"queued"); Twilio's error objects (`code`, `message`, `more_info`, `status`) for a bad login
(20003), a missing field (21602, 21604), a bad `To` (21211), a body over 1,600 characters
(21617) or bad `ContentVariables` (21656).

Each accepted message is appended to a JSON-lines log (`--log`) for the tests to read; every
attempt, refused or not, is appended to `<log>.attempts` (`to`, `status`, `at`) so tests can
count retries. An accepted message with a `StatusCallback` gets two callbacks in the background,
`MessageStatus=sent` then `delivered`, form-encoded and signed with `X-Twilio-Signature` as
Twilio signs them (`sign()` below, which tests also use to sign webhooks).

Test controls on the same server (not part of Twilio's API):

- `POST /_stub/faults` `{"status": 429|500|503, "count": N, "code"?: int}`: the next N message
  POSTs get that error (20429 "Too Many Requests" with `Retry-After: 1`, or 20500); nothing is
  logged for them. `{"to": "whatsapp:+1...", "status": 400, "code": 63003, "message": "..."}`:
  every message to that `To` fails with that error. `DELETE /_stub/faults` clears all faults.
- `POST /_stub/media` (raw body and its `Content-Type`) stores the bytes and answers
  `{"url": ".../2010-04-01/Accounts/{AccountSid}/Messages/MM.../Media/ME..."}`; a `GET` on that
  URL returns them, with the account's basic auth only, as Twilio's media URLs do.

    python tests/twilio_stub.py --port-file PATH --log PATH --account SID --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

API = "/2010-04-01/Accounts/{sid}"
E164 = re.compile(r"(whatsapp:)?\+[1-9]\d{7,14}")
MAX_BODY = 1600
SERVER_ERROR = "Internal Server Error"

Form = MultiDictProxy[str | bytes | web.FileField]


def sign(url: str, params: dict[str, str], token: str) -> str:
    """The `X-Twilio-Signature` Twilio sends with a request to `url` carrying form `params`."""
    return RequestValidator(token).compute_signature(url, params)


def error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Fault:
    status: int
    code: int
    message: str


def build_app(log: Path, account: str, token: str) -> web.Application:
    expected = "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()
    attempts_log = Path(f"{log}.attempts")
    pending: list[Fault] = []  # transient faults, one per upcoming message POST
    by_to: dict[str, Fault] = {}  # permanent faults per recipient
    media: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
    callbacks: set[asyncio.Task[None]] = set()

    def append(path: Path, entry: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def authorized(request: web.Request) -> bool:
        return request.headers.get("Authorization") == expected and request.match_info["sid"] == account

    async def send_callbacks(url: str, params: dict[str, str]) -> None:
        await asyncio.sleep(0.05)  # after the 201 has gone out
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for status in ("sent", "delivered"):
                form = params | {"MessageStatus": status, "SmsStatus": status}
                headers = {"X-Twilio-Signature": sign(url, form, token)}
                try:
                    async with session.post(url, data=form, headers=headers) as response:
                        if response.status >= 400:
                            print(f"status callback {url}: HTTP {response.status}", file=sys.stderr)
                except (aiohttp.ClientError, TimeoutError) as e:
                    print(f"status callback {url}: {e!r}", file=sys.stderr)

    def check(form: Form, to: str) -> web.Response | None:
        """Twilio's validation of a message request; None when it is acceptable."""
        if not to:
            return error(400, 21604, "A 'To' phone number is required.")
        if not E164.fullmatch(to):
            return error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if fault := by_to.get(to):
            return error(fault.status, fault.code, fault.message)
        if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
            return error(400, 21602, "Message body is required.")
        if len(str(form.get("Body", ""))) > MAX_BODY:
            return error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        return None

    async def messages(request: web.Request) -> web.Response:
        form = await request.post()
        to = str(form.get("To", ""))
        response = await answer(request, form, to)
        append(attempts_log, {"to": to, "status": response.status, "at": time.time()})
        return response

    async def answer(request: web.Request, form: Form, to: str) -> web.Response:
        if not authorized(request):
            return error(401, 20003, "Authenticate")
        if pending:
            fault = pending.pop(0)
            retry = {"Retry-After": "1"} if fault.status == 429 else None
            return error(fault.status, fault.code, fault.message, retry)
        if refused := check(form, to):
            return refused
        variables = None
        if raw := form.get("ContentVariables"):
            try:
                variables = json.loads(str(raw))
            except ValueError:
                return error(400, 21656, "The ContentVariables Parameter is invalid.")
        sid = "SM" + secrets.token_hex(16)
        entry = {
            "sid": sid,
            "from": form.get("From"),
            "to": to,
            "body": form.get("Body", ""),
            "content_sid": form.get("ContentSid"),
            "content_variables": variables,
            "status_callback": form.get("StatusCallback"),
            "media_url": [str(u) for u in form.getall("MediaUrl", [])],
            "at": time.time(),
        }
        append(log, entry)
        if callback := entry["status_callback"]:
            params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": account, "ApiVersion": "2010-04-01"}
            params |= {"From": str(entry["from"] or ""), "To": to}
            task = asyncio.create_task(send_callbacks(str(callback), params))
            callbacks.add(task)
            task.add_done_callback(callbacks.discard)
        return web.json_response(
            {
                "sid": sid,
                "account_sid": account,
                "api_version": "2010-04-01",
                "from": entry["from"],
                "to": to,
                "body": entry["body"],
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "num_media": str(len(entry["media_url"])),
                "error_code": None,
                "error_message": None,
                "uri": f"{API.format(sid=account)}/Messages/{sid}.json",
            },
            status=201,
        )

    async def add_fault(request: web.Request) -> web.Response:
        rule = await request.json()
        status = int(rule.get("status", 400 if "to" in rule else 500))
        if "to" in rule:
            code = int(rule.get("code", 63003))
            by_to[rule["to"]] = Fault(status, code, rule.get("message", f"Twilio error {code}"))
        else:
            code, message = (20429, "Too Many Requests") if status == 429 else (20500, SERVER_ERROR)
            fault = Fault(status, int(rule.get("code", code)), message)
            pending.extend(fault for _ in range(int(rule.get("count", 1))))
        return web.json_response({"pending": len(pending), "to": sorted(by_to)})

    async def clear_faults(request: web.Request) -> web.Response:
        pending.clear()
        by_to.clear()
        return web.json_response({"pending": 0, "to": []})

    async def add_media(request: web.Request) -> web.Response:
        path = f"{API.format(sid=account)}/Messages/MM{secrets.token_hex(16)}/Media/ME{secrets.token_hex(16)}"
        media[path] = (await request.read(), request.content_type)
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        return web.json_response({"url": f"http://127.0.0.1:{port}{path}"})

    async def get_media(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, 20003, "Authenticate")
        if request.path not in media:
            return error(404, 20404, f"The requested resource {request.path} was not found")
        data, content_type = media[request.path]
        return web.Response(body=data, content_type=content_type)

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post(f"{API}/Messages.json", messages)
    app.router.add_get(f"{API}/Messages/{{message}}/Media/{{media}}", get_media)
    app.router.add_post("/_stub/faults", add_fault)
    app.router.add_delete("/_stub/faults", clear_faults)
    app.router.add_post("/_stub/media", add_media)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    runner = web.AppRunner(build_app(args.log, args.account, args.token))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    args.port_file.write_text(str(runner.addresses[0][1]))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
