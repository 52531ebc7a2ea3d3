"""A stand-in for Twilio's REST API (an external service the tests cannot reach).

It answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` as Twilio does: form fields
`From`, `To`, `Body`; HTTP basic auth with the account SID and auth token; a 201 with the
message resource (`sid` "SM" + 32 hex, `status` "queued"); Twilio's error objects (`code`,
`message`, `more_info`, `status`) for a bad login (20003) or a missing field (21602, 21604).
Each accepted message is appended to a JSON-lines log for the tests to read.

    python tests/twilio_stub.py --port-file PATH --log PATH --account SID --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import time
from pathlib import Path

from aiohttp import web


def error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def build_app(log: Path, account: str, token: str) -> web.Application:
    expected = "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()

    async def messages(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected or request.match_info["sid"] != account:
            return error(401, 20003, "Authenticate")
        form = await request.post()
        if not form.get("To"):
            return error(400, 21604, "A 'To' phone number is required.")
        if not form.get("Body") and not form.get("MediaUrl"):
            return error(400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        entry = {
            "sid": sid,
            "from": form.get("From"),
            "to": form["To"],
            "body": form.get("Body", ""),
            "at": time.time(),
        }
        with log.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return web.json_response(
            {
                "sid": sid,
                "account_sid": account,
                "from": entry["from"],
                "to": entry["to"],
                "body": entry["body"],
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
            },
            status=201,
        )

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
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
