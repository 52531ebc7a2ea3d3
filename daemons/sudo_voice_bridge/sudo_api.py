"""What the bridge asks sudo-api, as a service (the `service-token` credential), never as a family.

The bridge holds no database handle and no Docker access: sudo-api tells it which family a room
belongs to, wakes that family's agent (through the provisioner) and says where it answers,
hands over the admin's LiveKit settings, keeps each voice turn in the family's Home thread, and
hands each room what the agent said to its device out loud, until the room says it was said.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp


class SudoApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Family:
    id: uuid.UUID
    name: str
    room: str
    gateway_key: str
    """The family's key at sudo-gateway: speech through the admin's provider, billed to the family."""


@dataclass(frozen=True)
class Runtime:
    url: str
    """The family's Hermes api_server, e.g. http://10.213.0.5:8642."""
    api_key: str
    """Its API_SERVER_KEY."""
    identity_url: str
    """Where the container at that address proves which family it serves (sudo_chat's /identity)."""


@dataclass(frozen=True)
class Announcement:
    """Something the family's agent said first, for a room to say out loud."""

    id: str
    text: str


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str


class SudoApi:
    def __init__(self, base_url: str, service_token: str, *, timeout: float = 150.0) -> None:
        # The runtime call waits for a spawn, which has its own deadline (120 s by default).
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {service_token}"}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5))

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> SudoApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def family_of_room(self, room: str) -> Family | None:
        """The family whose room this is; None for a room of no family."""
        try:
            body = await self._call("GET", f"/v1/service/rooms/{room}")
        except SudoApiError as exc:
            if exc.status == 404:
                return None
            raise
        return Family(uuid.UUID(body["user_id"]), body["name"], body["room"], body["gateway_key"])

    async def runtime(self, family: uuid.UUID) -> Runtime:
        """Wake the family's agent (no-op when it runs) and say where it answers."""
        body = await self._call("POST", f"/v1/service/runtimes/{family}")
        return Runtime(body["url"], body["api_key"], body["identity_url"])

    async def livekit(self) -> LiveKitServer:
        body = await self._call("GET", "/v1/service/livekit")
        return LiveKitServer(body["url"], body["api_key"], body["api_secret"])

    async def voice_turn(self, room: str, heard: str, answered: str) -> None:
        """Keep a turn of the room's conversation in the family's Home thread."""
        await self._call(
            "POST", "/v1/service/voice/turns", {"room": room, "heard": heard, "answered": answered}
        )

    async def announcements(self, room: str, wait: float) -> list[Announcement]:
        """What the agent said to the room's device that the room has not said yet, oldest first;
        if nothing, sudo-api holds the answer up to `wait` seconds for something."""
        body = await self._call("GET", f"/v1/service/rooms/{room}/announcements?wait={wait:g}")
        return [Announcement(a["id"], a["text"]) for a in body["announcements"]]

    async def announcement_spoken(self, room: str, announcement: str) -> None:
        """The room said it: sudo-api hands it out no more, and shows it spoken."""
        await self._call("POST", f"/v1/service/rooms/{room}/announcements/{announcement}/spoken")

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with self._http.request(
                method, self._base + path, headers=self._headers, json=payload
            ) as resp:
                if resp.status == 204:
                    return {}
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if not 200 <= resp.status < 300 or not isinstance(body, dict):
                    error = body.get("error") if isinstance(body, dict) else None
                    raise SudoApiError(resp.status, f"sudo-api {method} {path}: {resp.status} {error or ''}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SudoApiError(0, f"sudo-api unreachable at {self._base}: {exc!r}") from exc
