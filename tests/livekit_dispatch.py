"""LiveKit's agent worker protocol, as livekit-server speaks it, for tests.

A websocket at `/agent` authenticated by a JWT the worker signs with the API key and secret
(with the `agent` grant), protobuf `WorkerMessage`s in and `ServerMessage`s out
(livekit.protocol.agent): the worker registers under its agent name, the server asks it whether
it takes a job for a room (`AvailabilityRequest`), the worker answers (`AvailabilityResponse`),
and for a room that exists the server assigns the job (`JobAssignment`) with a token it signs
for the agent's participant (kind AGENT). This alone is a stand-in for a server with no rooms
(it never assigns: tests/e2e's livekit-server); tests/livekit_server.py adds the rooms.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import WSMsgType, web
from google.protobuf.message import Message
from livekit.api import AccessToken, TokenVerifier, VideoGrants
from livekit.protocol import agent, models

M = TypeVar("M", bound=Message)


async def protobufs(ws: web.WebSocketResponse, message: type[M]) -> AsyncIterator[M]:
    """The websocket's binary messages, each parsed as a `message` (LiveKit sends no others)."""
    async for received in ws:
        if received.type == WSMsgType.BINARY:
            parsed = message()
            parsed.ParseFromString(received.data)
            yield parsed


def sid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


@dataclass
class Worker:
    ws: web.WebSocketResponse
    registration: agent.RegisterWorkerRequest
    answers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(default_factory=dict)


class AgentDispatch:
    def __init__(self, api_key: str, api_secret: str) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.verifier = TokenVerifier(api_key, api_secret)
        self.version = "1.9.0"
        self.workers: list[Worker] = []
        self.refused: list[str] = []
        """Why connections were refused (bad token, missing grant)."""
        self.events: list[tuple[str, str, str]] = []
        """What happened, in order: ("joined" | "left" | "dispatched" | "no worker" |
        "dispatch failed", room, who)."""
        self.registered = asyncio.Event()
        self.url = ""
        """Where assigned agents join (the server's own URL)."""

    def room_info(self, room: str) -> models.Room | None:
        """The room a job is offered for, if it exists (none here: no job is assigned)."""
        return None

    def claims(self, token: str):
        try:
            return self.verifier.verify(token)
        except Exception as exc:  # livekit-api raises jwt's own errors
            self.refused.append(f"bad token: {exc}")
            raise web.HTTPUnauthorized(text="invalid token") from None

    async def agent(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        claims = self.claims(token)
        if scheme != "Bearer" or not (claims.video and claims.video.agent):
            self.refused.append("no agent grant")
            raise web.HTTPUnauthorized(text="the token lacks the agent grant")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = agent.WorkerMessage()
        first.ParseFromString(await ws.receive_bytes())
        if not first.HasField("register"):
            await ws.close()
            return ws
        worker = Worker(ws, first.register)
        reply = agent.ServerMessage(
            register=agent.RegisterWorkerResponse(
                worker_id=sid("AW"), server_info=models.ServerInfo(version=self.version)
            )
        )
        await ws.send_bytes(reply.SerializeToString())
        self.workers.append(worker)
        self.registered.set()
        try:
            async for incoming in protobufs(ws, agent.WorkerMessage):
                kind = incoming.WhichOneof("message")
                if kind == "availability":
                    answer = worker.answers.get(incoming.availability.job_id)
                    if answer is not None and not answer.done():
                        answer.set_result(incoming.availability)
                elif kind == "ping":
                    pong = agent.WorkerPong(last_timestamp=incoming.ping.timestamp)
                    await ws.send_bytes(agent.ServerMessage(pong=pong).SerializeToString())
        finally:
            self.workers.remove(worker)
            if not self.workers:
                self.registered.clear()
        return ws

    async def offer(self, room: str, agent_name: str, within: float = 30.0) -> agent.AvailabilityResponse:
        """Ask the registered worker of `agent_name` whether it takes a job in `room`."""
        worker = next(w for w in self.workers if w.registration.agent_name == agent_name)
        info = self.room_info(room)
        job = agent.Job(
            id=sid("AJ"),
            type=agent.JobType.JT_ROOM,
            room=info or models.Room(sid=sid("RM"), name=room),
            agent_name=agent_name,
        )
        answer = asyncio.get_running_loop().create_future()
        worker.answers[job.id] = answer
        request = agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))
        await worker.ws.send_bytes(request.SerializeToString())
        response = await asyncio.wait_for(answer, within)
        if response.available and info is not None:
            await worker.ws.send_bytes(
                agent.ServerMessage(
                    assignment=agent.JobAssignment(
                        job=job, url=self.url, token=self.agent_token(room, response)
                    )
                ).SerializeToString()
            )
            self.events.append(("dispatched", room, agent_name))
        return response

    def agent_token(self, room: str, accepted: agent.AvailabilityResponse) -> str:
        identity = accepted.participant_identity or sid("agent")
        token = (
            AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(accepted.participant_name or identity)
            .with_kind("agent")
            .with_grants(
                VideoGrants(
                    room_join=True,
                    room=room,
                    agent=True,
                    can_publish=True,
                    can_subscribe=True,
                    can_publish_data=True,
                    can_update_own_metadata=True,
                )
            )
        )
        if accepted.participant_metadata:
            token = token.with_metadata(accepted.participant_metadata)
        if accepted.participant_attributes:
            token = token.with_attributes(dict(accepted.participant_attributes))
        return token.to_jwt()
