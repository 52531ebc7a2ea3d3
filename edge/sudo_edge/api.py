"""The sudo-api client: pairing, pairing state, heartbeats, LiveKit tokens.

Every failure is one of four exceptions, so the satellite decides by kind, not by status code:
`Unreachable` (network down, DNS, refused, timeout, 5xx, an answer that isn't sudo-api's: retry
with backoff), `Unauthorized` (401: the token is not, or no longer, a paired device's: pair
again), `VoiceNotConfigured` (503 on the voice token: keep heartbeating, ask later) and
`Refused` (another 4xx: the request itself is wrong).

Expiry times come as Unix seconds on the server's clock. A Pi has no battery-backed clock and may
run before NTP has set it, so they are turned into durations against the server's own `Date`
header, and from there into deadlines on the monotonic clock.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from . import __version__
from .settings import ApiSettings

log = logging.getLogger("sudo-edge.api")


class ApiError(Exception):
    """sudo-api could not be used; the message says why, ready for the log."""


class Unreachable(ApiError):
    """No usable answer: try again later."""


class Unauthorized(ApiError):
    """The device token is not (or no longer) a paired device's."""


class VoiceNotConfigured(ApiError):
    """The admin has not set up LiveKit on sudo-api yet."""


class Refused(ApiError):
    """sudo-api refused the request itself (a 4xx other than 401)."""


@dataclass(frozen=True)
class Pairing:
    pairing_id: str
    code: str
    """What the family types on /integrations, e.g. "K7QX2M"."""
    device_token: str
    """Usable only once the code has been typed."""
    expires_in: float
    """How long the code stays valid (seconds)."""
    heartbeat_sec: float


@dataclass(frozen=True)
class PairingState:
    state: str
    """"pending", "confirming", "paired", "expired" or "revoked"."""
    device_id: str | None
    user_id: str | None
    family_name: str = ""
    """While confirming: the family whose parent typed the code, said aloud with the code."""
    confirm_code: str = ""
    """While confirming: what the parent types back on /integrations."""


@dataclass(frozen=True)
class VoiceToken:
    url: str
    room: str
    token: str
    deadline: float
    """When the token expires, on the monotonic clock."""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class SudoApi:
    def __init__(self, settings: ApiSettings) -> None:
        self.base = settings.url.rstrip("/")
        self.timeout = settings.timeout_sec
        self._ssl: ssl.SSLContext | bool = True
        if settings.ca_file:
            self._ssl = ssl.create_default_context(cafile=str(settings.ca_file))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SudoApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"sudo-edge/{__version__}"},
            )
        return self._session

    async def start_pairing(self, name: str) -> Pairing:
        body, now = await self._call("POST", "/v1/devices/pairing", json={"name": name[:80]}, ok=201)
        return Pairing(
            pairing_id=_field(body, "pairing_id", str),
            code=_field(body, "code", str),
            device_token=_field(body, "device_token", str),
            expires_in=max(0.0, _field(body, "expires_at", float) - now),
            heartbeat_sec=_field(body, "heartbeat_sec", float),
        )

    async def pairing_state(self, token: str) -> PairingState:
        body, _ = await self._call("GET", "/v1/devices/pairing", token=token)
        state = _field(body, "state", str)
        confirming = state == "confirming"
        return PairingState(
            state=state,
            device_id=body.get("device_id"),
            user_id=body.get("user_id"),
            family_name=_field(body, "family_name", str) if confirming else "",
            confirm_code=_field(body, "confirm_code", str) if confirming else "",
        )

    async def heartbeat(self, token: str, *, muted: bool = False) -> float:
        """One beat, saying whether the family muted the device; returns how long until the
        next one (seconds)."""
        body, _ = await self._call("POST", "/v1/devices/heartbeat", token=token, json={"muted": muted})
        return _field(body, "next_in", float)

    async def voice_token(self, token: str) -> VoiceToken:
        body, now = await self._call("POST", "/v1/voice/token", token=token, voice=True)
        expires_in = _field(body, "expires_at", float) - now
        return VoiceToken(
            url=_field(body, "url", str),
            room=_field(body, "room", str),
            token=_field(body, "token", str),
            deadline=time.monotonic() + expires_in,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: dict[str, Any] | None = None,
        ok: int = 200,
        voice: bool = False,
    ) -> tuple[dict[str, Any], float]:
        """(JSON body, the server's time of the answer in Unix seconds)."""
        url = self.base + path
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._http().request(method, url, json=json, headers=headers, ssl=self._ssl) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                status = resp.status
                now = _server_time(resp.headers.get("Date"))
        except TimeoutError:
            raise Unreachable(
                f"sudo-api at {self.base} did not answer {method} {path} within {self.timeout:g} s"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(f"sudo-api at {self.base}: its TLS certificate is not trusted ({exc})") from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach sudo-api at {self.base}: {exc.os_error or exc}") from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(f"sudo-api at {self.base} failed {method} {path}: {exc!r}") from exc

        error = body.get("error") if isinstance(body, dict) else None
        if status == ok:
            if not isinstance(body, dict):
                raise Unreachable(f"sudo-api answered {method} {path} with something that is not JSON")
            return body, now
        if status == 401:
            raise Unauthorized(f"sudo-api refused the device token: {error or 'HTTP 401'}")
        if voice and status == 503 and error:
            raise VoiceNotConfigured(error)
        if status >= 500 or error is None:
            # A proxy's error page, a load balancer's 502 or a server in trouble: try later.
            raise Unreachable(
                f"sudo-api answered {method} {path} with HTTP {status}: {error or 'no JSON error'}"
            )
        raise Refused(f"sudo-api refused {method} {path} with HTTP {status}: {error}")


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str) and value:
        return value
    raise Unreachable(f"sudo-api sent an unexpected answer: {key!r} is {value!r}")


def _server_time(date: str | None) -> float:
    """The server's time of an answer; from `Date` (whole seconds) it errs late, so expiries err early."""
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp() + 1
        except (TypeError, ValueError):
            pass
    return time.time()
