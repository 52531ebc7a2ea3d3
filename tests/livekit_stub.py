"""A stand-in for the part of livekit-server that dispatches jobs to agent workers.

No LiveKit server can run on these machines. What the voice bridge needs of one, apart from
WebRTC media, is the worker protocol: a WebSocket at `/agent` authenticated by a JWT the worker
signs with the API key and secret (with the `agent` grant), protobuf `WorkerMessage`s in and
`ServerMessage`s out (livekit.protocol.agent): the worker registers under its agent name, the
server asks it whether it takes a job for a room (`AvailabilityRequest`), the worker answers
(`AvailabilityResponse`). This stub speaks exactly that and records what it was told; it never
assigns a job, since joining a room needs the media server.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from livekit.api import TokenVerifier
from livekit.protocol import agent, models


@dataclass
class Worker:
    ws: web.WebSocketResponse
    registration: agent.RegisterWorkerRequest
    answers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(default_factory=dict)


class LiveKitDispatch:
    def __init__(self, api_key: str, api_secret: str) -> None:
        self.verifier = TokenVerifier(api_key, api_secret)
        self.workers: list[Worker] = []
        self.refused: list[str] = []
        """Why connections were refused (bad token, no agent grant)."""
        self.registered = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/agent", self.agent)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def agent(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            claims = self.verifier.verify(token)
        except Exception as exc:  # livekit-api raises jwt's own errors
            self.refused.append(f"bad token: {exc}")
            raise web.HTTPUnauthorized(text="invalid token") from None
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
                worker_id=f"AW_{secrets.token_hex(6)}", server_info=models.ServerInfo(version="stub")
            )
        )
        await ws.send_bytes(reply.SerializeToString())
        self.workers.append(worker)
        self.registered.set()
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                continue
            incoming = agent.WorkerMessage()
            incoming.ParseFromString(message.data)
            kind = incoming.WhichOneof("message")
            if kind == "availability":
                answer = worker.answers.get(incoming.availability.job_id)
                if answer is not None and not answer.done():
                    answer.set_result(incoming.availability)
            elif kind == "ping":
                pong = agent.WorkerPong(last_timestamp=incoming.ping.timestamp)
                await ws.send_bytes(agent.ServerMessage(pong=pong).SerializeToString())
        self.workers.remove(worker)
        return ws

    async def offer(self, room: str, agent_name: str, within: float = 30.0) -> agent.AvailabilityResponse:
        """Ask the registered worker of `agent_name` whether it takes a job in `room`."""
        worker = next(w for w in self.workers if w.registration.agent_name == agent_name)
        job = agent.Job(
            id=f"AJ_{secrets.token_hex(6)}",
            type=agent.JobType.JT_ROOM,
            room=models.Room(sid=f"RM_{secrets.token_hex(6)}", name=room),
            agent_name=agent_name,
        )
        answer = asyncio.get_running_loop().create_future()
        worker.answers[job.id] = answer
        request = agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))
        await worker.ws.send_bytes(request.SerializeToString())
        return await asyncio.wait_for(answer, within)
