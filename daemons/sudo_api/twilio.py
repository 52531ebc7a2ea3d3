"""Sending WhatsApp messages through Twilio's Messages API.

The account's credentials are admin settings; they stay on the host (sudo-api sends, never a
family container). `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, with
HTTP basic auth; WhatsApp numbers are written `whatsapp:+E164`.
"""

from __future__ import annotations

from typing import Any

import aiohttp

DEFAULT_API = "https://api.twilio.com"
BODY_MAX = 1600


class TwilioError(RuntimeError):
    """Twilio is unreachable or refused the message; the text says which."""


class TwilioNotConfigured(TwilioError):
    pass


async def send_whatsapp(settings: dict[str, Any], to: str, body: str) -> str:
    """Send `body` to the E.164 number `to`; returns Twilio's message SID."""
    sid, token, sender = (settings.get(f"twilio.{k}") for k in ("account_sid", "auth_token", "whatsapp_from"))
    if not (sid and token and sender):
        raise TwilioNotConfigured(
            "WhatsApp is not set up: an admin sets the Twilio account, token and number"
        )
    url = f"{settings.get('twilio.api_base') or DEFAULT_API}/2010-04-01/Accounts/{sid}/Messages.json"
    form = {"From": f"whatsapp:{sender}", "To": f"whatsapp:{to}", "Body": body[:BODY_MAX]}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.post(url, data=form, auth=aiohttp.BasicAuth(sid, token)) as resp,
        ):
            answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TwilioError(f"Twilio could not be reached: {exc}") from exc
    if not isinstance(answer, dict):
        raise TwilioError(f"Twilio answered {resp.status} without a JSON object")
    if resp.status >= 400:
        raise TwilioError(f"Twilio refused the message: {answer.get('message', resp.reason)}")
    return answer["sid"]
