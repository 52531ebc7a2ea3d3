"""Twilio's Messages API, spoken from the host only (sudo-api and sudo-gateway).

The account's credentials are admin settings in the database; no family container ever holds
them. `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, with HTTP basic
auth; WhatsApp numbers are written `whatsapp:+E164`. Media URLs of inbound messages are read
with the same basic auth.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

DEFAULT_API = "https://api.twilio.com"
BODY_MAX = 1600
"""Longest WhatsApp body Twilio takes in one message (characters)."""
RETRYABLE = frozenset({429, 500, 502, 503, 504})
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
"""A phone number in E.164 form, `+` and up to 15 digits: how a WhatsApp number is written
here, after Twilio's `whatsapp:` prefix."""


class TwilioError(RuntimeError):
    """Twilio is unreachable or refused the message; the text says which."""


class TwilioNotConfigured(TwilioError):
    pass


@dataclass(frozen=True)
class Account:
    sid: str
    token: str
    sender: str
    """The WhatsApp sender number, E.164."""
    api_base: str
    template_sid: str
    """Content SID of the approved template for messages outside the 24-hour window ('' = none)."""
    public_url: str
    """This server's public address, for status callbacks ('' = no callbacks)."""

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Account:
        """The admin's `twilio.*` settings; TwilioNotConfigured when the account is incomplete."""
        sid, token, sender = (
            settings.get(f"twilio.{k}") for k in ("account_sid", "auth_token", "whatsapp_from")
        )
        if not (sid and token and sender):
            raise TwilioNotConfigured(
                "WhatsApp is not set up: an admin sets the Twilio account, token and number"
            )
        return cls(
            sid,
            token,
            sender,
            (settings.get("twilio.api_base") or DEFAULT_API).rstrip("/"),
            settings.get("twilio.template_sid") or "",
            (settings.get("twilio.public_url") or "").rstrip("/"),
        )

    @property
    def auth(self) -> dict[str, str]:
        """HTTP basic auth with the account SID and auth token, as a header."""
        return {"Authorization": "Basic " + base64.b64encode(f"{self.sid}:{self.token}".encode()).decode()}

    @property
    def status_callback(self) -> str | None:
        return f"{self.public_url}/v1/whatsapp/status" if self.public_url else None


@dataclass(frozen=True)
class Answer:
    """Twilio's answer to one message: its HTTP status and JSON body, as they came."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def error(self) -> str:
        code = self.body.get("code")
        return f"{self.body.get('message', 'HTTP ' + str(self.status))}" + (
            f" (Twilio {code})" if code else ""
        )


async def post_message(
    http: aiohttp.ClientSession,
    account: Account,
    to: str,
    *,
    body: str | None = None,
    template_text: str | None = None,
) -> Answer:
    """Send `body` to the E.164 number `to`, or the account's template with `template_text` as
    its variable {{1}}. Raises TwilioError only when Twilio could not be reached."""
    form = {"From": f"whatsapp:{account.sender}", "To": f"whatsapp:{to}"}
    if template_text is not None:
        form["ContentSid"] = account.template_sid
        form["ContentVariables"] = json.dumps({"1": template_text})
    else:
        form["Body"] = body or ""
    if account.status_callback:
        form["StatusCallback"] = account.status_callback
    url = f"{account.api_base}/2010-04-01/Accounts/{account.sid}/Messages.json"
    try:
        async with http.post(url, data=form, headers=account.auth) as resp:
            answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TwilioError(f"Twilio could not be reached: {exc}") from exc
    if not isinstance(answer, dict):
        answer = {"message": f"Twilio answered {resp.status} without a JSON object"}
    return Answer(resp.status, answer)


async def send_whatsapp(settings: dict[str, Any], to: str, body: str) -> str:
    """Send one message from the host (codes, notices); returns Twilio's message SID."""
    account = Account.from_settings(settings)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        answer = await post_message(http, account, to, body=body[:BODY_MAX])
    if not answer.ok:
        raise TwilioError(f"Twilio refused the message: {answer.error}")
    return answer.body["sid"]


async def fetch_media(
    http: aiohttp.ClientSession, account: Account, url: str, max_bytes: int
) -> tuple[bytes, str] | None:
    """An inbound message's media file and its type; None when it is larger than max_bytes."""
    try:
        async with http.get(url, headers=account.auth) as resp:
            if resp.status != 200:
                raise TwilioError(f"Twilio answered {resp.status} for a media file")
            if (resp.content_length or 0) > max_bytes:
                return None
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    return None
            return bytes(data), resp.content_type
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TwilioError(f"Twilio could not be reached for a media file: {exc}") from exc
