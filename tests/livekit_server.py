"""A LiveKit server for tests: the real `livekit` SDK (its Rust core) and livekit-agents join it.

No livekit-server can run on these machines (a Go binary; no Go toolchain here). This stands in
for it, speaking its protocol as the `livekit-protocol` package defines it:

- Signalling at `/rtc`: a websocket authenticated by the participant's JWT (`access_token`),
  protobuf `SignalRequest`s in and `SignalResponse`s out: join, the subscriber connection
  offered by the server (`subscriber_primary`, as livekit-server does), the publisher's
  offer answered, trickle ICE both ways, `AddTrackRequest` → `TrackPublishedResponse`,
  participant updates (attributes, the agent's `lk.agent.state` among them, acknowledged by
  `RequestResponse`), subscription updates, mute, ping/pong, leave. A second join under the
  same identity replaces the first (`DUPLICATE_IDENTITY`), as livekit-server does. A resume
  (`reconnect=1`) is refused, so the SDK falls back to a full reconnect, which it supports.
  `/rtc/v1` (single peer connection) answers 404, which newer SDKs take as "use `/rtc`".
- Media through a real WebRTC stack (aiortc: ICE, DTLS, SRTP, Opus): each participant's
  published audio is decoded and sent to every other participant of the room (auto-subscribe),
  and data packets are forwarded over the data channels, reliable or lossy as sent.
- Agent dispatch at `/agent`, the worker protocol: workers register under their agent name;
  when a room is created by a token whose room configuration names an agent, or when a test
  asks (`dispatch`), the server offers the job (`AvailabilityRequest`), and on acceptance assigns
  it (`JobAssignment`) with a token it signs for the agent's participant (kind AGENT).

What it leaves out: one node, audio only (no video, simulcast or codecs negotiation beyond
Opus), no TURN, no server-side resume, no room service API, no egress/ingress/SIP, no
end-to-end encryption, no bandwidth estimation. Media candidates are offered on one address
(`media_host`), so that a test decides which network the media crosses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field

import aioice.ice
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc
from livekit_dispatch import AgentDispatch, protobufs, sid

log = logging.getLogger("livekit-test-server")

DEPARTURE_TIMEOUT_SEC = 20
"""livekit-server's default: how long a room outlives its last participant."""
PING_INTERVAL_SEC = 5
PING_TIMEOUT_SEC = 15
FORWARD_QUEUE_FRAMES = 25
"""Frames (20 ms each) a slow subscriber may lag before the oldest are dropped."""


def level_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768)


async def settled(pc: RTCPeerConnection, within: float = 15.0) -> None:
    """Until a negotiated connection is connected, or failed (or `within` passed).

    aiortc starts a negotiation's senders and receivers only if the connection's DTLS is up when
    that negotiation is applied: one applied while the first handshake is still going never
    starts its media (measured here: an agent subscribed to a device's microphone during its
    handshake got none of its frames). livekit-server (pion) has no such window, so this one
    waits it out before it applies the next description."""

    def connecting() -> bool:
        return pc.remoteDescription is not None and pc.connectionState in ("new", "connecting")

    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    try:
        async with asyncio.timeout(within):
            while connecting():
                await changed.wait()
                changed.clear()
    except TimeoutError:
        log.warning("a connection still not connected after %g s", within)
    finally:
        pc.remove_listener("connectionstatechange", changed.set)


class ForwardedTrack(MediaStreamTrack):
    """Another participant's audio as a track of a subscriber's connection.

    Its id is the published track's sid: the SDK reads the track and participant sids from the
    stream's id, `<participant sid>|<track sid>`, which `Participant.subscribe` sets."""

    kind = "audio"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self.track_sid = track_sid
        self.frames: asyncio.Queue = asyncio.Queue(FORWARD_QUEUE_FRAMES)
        self.sent: list[float] = []
        """When (time.monotonic()) the connection took each frame to send: the media flows."""

    @property
    def id(self) -> str:
        return self.track_sid

    def put(self, frame) -> None:
        if self.frames.full():
            self.frames.get_nowait()
        self.frames.put_nowait(frame)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.frames.get()
        self.sent.append(time.monotonic())
        return frame


@dataclass
class Publication:
    info: models.TrackInfo
    owner: Participant
    media: MediaStreamTrack | None = None
    sinks: dict[str, ForwardedTrack] = field(default_factory=dict)
    """The copies sent to subscribers, by the subscriber's sid."""
    pump: asyncio.Task | None = None
    heard: list[tuple[float, float]] = field(default_factory=list)
    """Each frame the server received: when (time.monotonic()) and its level (dBFS)."""


class Participant:
    def __init__(self, room: Room, ws: web.WebSocketResponse, claims, kind: int) -> None:
        self.room = room
        self.ws = ws
        self.info = models.ParticipantInfo(
            sid=sid("PA"),
            identity=claims.identity,
            name=claims.name or "",
            metadata=claims.metadata or "",
            state=models.ParticipantInfo.State.ACTIVE,
            joined_at=int(time.time()),
            joined_at_ms=int(time.time() * 1000),
            kind=kind,
            is_publisher=False,
            version=1,
            permission=models.ParticipantPermission(
                can_subscribe=True,
                can_publish=True,
                can_publish_data=True,
                can_update_metadata=True,
                agent=kind == models.ParticipantInfo.Kind.AGENT,
            ),
        )
        self.info.attributes.update(claims.attributes or {})
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.publisher = RTCPeerConnection(config)
        self.subscriber = RTCPeerConnection(config)
        self.pending: dict[str, models.TrackInfo] = {}
        """Tracks announced by AddTrackRequest whose media has not arrived yet, by client id."""
        self.published: dict[str, Publication] = {}
        self.channels: dict[str, RTCDataChannel] = {}
        """The server's data channels on the subscriber connection, by label."""
        self.senders: dict[str, RTCRtpSender] = {}
        """The subscriber connection's senders, by track sid."""
        self.unconfirmed: set[str] = set()
        """Tracks added to the subscriber connection whose publishers have not been told yet."""
        self.early_candidates: dict[int, list[dict]] = {0: [], 1: []}
        self.answer: asyncio.Future[RTCSessionDescription] | None = None
        self.renegotiate = asyncio.Event()
        self.negotiator: asyncio.Task | None = None
        self.offers: asyncio.Queue[rtc.SessionDescription] = asyncio.Queue()
        """The publisher's offers, answered one at a time (`_answer_offers`)."""
        self.answerer = asyncio.create_task(self._answer_offers(), name=f"answer-{self.identity}")
        self.closed = False
        self.publisher.on("track", self._on_media)
        self.publisher.on("datachannel", self._on_datachannel)
        for target, pc in (("publisher", self.publisher), ("subscriber", self.subscriber)):
            pc.on("connectionstatechange", lambda target=target, pc=pc: self._connection_changed(target, pc))

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def identity(self) -> str:
        return self.info.identity

    def is_agent(self) -> bool:
        return self.info.kind == models.ParticipantInfo.Kind.AGENT

    async def send(self, **message) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(rtc.SignalResponse(**message).SerializeToString())

    def changed(self) -> None:
        self.info.version += 1

    def _connection_changed(self, target: str, pc: RTCPeerConnection) -> None:
        """In the server's events, for a failure's report: which connection got through, when."""
        event = f"{target} connection {pc.connectionState} at {time.monotonic():.1f}"
        self.room.server.events.append((event, self.room.name, self.identity))

    # Signalling

    async def start(self) -> None:
        """After the join response: the subscriber connection, with the server's data channels."""
        self.channels["_reliable"] = self.subscriber.createDataChannel("_reliable", ordered=True)
        self.channels["_lossy"] = self.subscriber.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        self.negotiator = asyncio.create_task(self._negotiate(), name=f"negotiate-{self.identity}")
        self.renegotiate.set()

    async def _negotiate(self) -> None:
        """Offer the subscriber connection again whenever its tracks changed, one at a time."""
        while not self.closed:
            await self.renegotiate.wait()
            await settled(self.subscriber)
            self.renegotiate.clear()
            offer = await self.subscriber.createOffer()
            await self.subscriber.setLocalDescription(offer)
            self.answer = asyncio.get_running_loop().create_future()
            local = self.subscriber.localDescription
            await self.send(offer=rtc.SessionDescription(type="offer", sdp=local.sdp))
            try:
                answer = await asyncio.wait_for(self.answer, 30)
            except TimeoutError:
                log.warning("%s never answered the subscriber offer", self.identity)
                continue
            await self.subscriber.setRemoteDescription(answer)
            await self._add_candidates(rtc.SignalTarget.SUBSCRIBER)
            await self._confirm_subscriptions()

    async def _confirm_subscriptions(self) -> None:
        """Tell each publisher that this participant now receives its track (`TrackSubscribed`):
        livekit-agents waits for it before the agent speaks into a room."""
        confirmed, self.unconfirmed = self.unconfirmed, set()
        for track_sid in confirmed:
            publication = self.room.publication(track_sid)
            if publication is not None and track_sid in self.senders:
                await publication.owner.send(track_subscribed=rtc.TrackSubscribed(track_sid=track_sid))

    async def _answer_offers(self) -> None:
        """Answer the publisher's offers in order, each once the connection is settled. (Not in
        the signalling loop: the first connection's candidates come through it.)"""
        while True:
            offer = await self.offers.get()
            await settled(self.publisher)
            try:
                await self.publisher.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                await self._add_candidates(rtc.SignalTarget.PUBLISHER)
                answer = await self.publisher.createAnswer()
                await self.publisher.setLocalDescription(answer)
            except Exception:
                log.exception("%s: cannot answer the publisher's offer", self.identity)
                continue
            local = self.publisher.localDescription
            await self.send(answer=rtc.SessionDescription(type="answer", sdp=local.sdp, id=offer.id))

    async def handle(self, request: rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "offer":
            self.offers.put_nowait(request.offer)
        elif kind == "answer":
            if self.answer is not None and not self.answer.done():
                self.answer.set_result(RTCSessionDescription(request.answer.sdp, "answer"))
        elif kind == "trickle":
            init = json.loads(request.trickle.candidateInit)
            self.early_candidates[request.trickle.target].append(init)
            await self._add_candidates(request.trickle.target)
        elif kind == "add_track":
            add = request.add_track
            info = models.TrackInfo(
                sid=sid("TR"),
                type=add.type,
                name=add.name,
                source=add.source,
                muted=add.muted,
                mime_type="audio/opus",
                disable_dtx=add.disable_dtx,
                stereo=add.stereo,
                stream=add.stream,
            )
            self.pending[add.cid] = info
            await self.send(track_published=rtc.TrackPublishedResponse(cid=add.cid, track=info))
        elif kind == "mute":
            publication = self.published.get(request.mute.sid)
            if publication is not None:
                publication.info.muted = request.mute.muted
                self.changed()
                await self.room.broadcast_update(self)
        elif kind == "update_metadata":
            update = request.update_metadata
            if update.metadata:
                self.info.metadata = update.metadata
            if update.name:
                self.info.name = update.name
            for key, value in update.attributes.items():
                if value:
                    self.info.attributes[key] = value
                else:
                    self.info.attributes.pop(key, None)
            self.changed()
            if update.request_id:
                response = rtc.RequestResponse(request_id=update.request_id, reason=rtc.RequestResponse.OK)
                await self.send(request_response=response)
            await self.room.broadcast_update(self, to_self=True)
        elif kind == "subscription":
            for track_sid in request.subscription.track_sids:
                publication = self.room.publication(track_sid)
                if publication is None:
                    continue
                if request.subscription.subscribe:
                    self.subscribe(publication)
                else:
                    self.unsubscribe(track_sid)
        elif kind == "ping":
            await self.send(pong=request.ping)
        elif kind == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=request.ping_req.timestamp, timestamp=int(time.time() * 1000))
            await self.send(pong_resp=pong)
        elif kind == "leave":
            await self.room.remove(self, models.DisconnectReason.CLIENT_INITIATED, notify=False)
        # track_setting, update_layers, subscription_permission, sync_state, simulate and the
        # data-track requests have no effect in an audio-only, single-node room.

    async def _add_candidates(self, target: int) -> None:
        """Trickled candidates, once the connection they belong to has its remote description."""
        pc = self.publisher if target == rtc.SignalTarget.PUBLISHER else self.subscriber
        if pc.remoteDescription is None:
            return
        waiting, self.early_candidates[target] = self.early_candidates[target], []
        for init in waiting:
            line = init.get("candidate", "")
            if not line:
                continue
            candidate = candidate_from_sdp(line.split(":", 1)[1])
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
            await pc.addIceCandidate(candidate)

    # Media

    def _on_media(self, track: MediaStreamTrack) -> None:
        for receiver in self.publisher.getReceivers():
            if receiver.track is track:
                # livekit-server forwards each RTP packet as it comes. aiortc's audio receiver
                # holds four packets (80 ms) before it decodes the first: none here, so that the
                # stand-in adds as little latency as it can (it still transcodes, unlike it).
                receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=0)
        info = self.pending.pop(track.id, None)
        if info is None and self.pending:  # an SDK that names its track otherwise: oldest first
            info = self.pending.pop(next(iter(self.pending)))
        if info is None:
            log.warning("%s sent media for no announced track", self.identity)
            return
        publication = Publication(info, self, track)
        self.published[info.sid] = publication
        self.info.tracks.append(info)
        self.info.is_publisher = True
        self.changed()
        publication.pump = asyncio.create_task(self._pump(publication), name=f"pump-{info.sid}")
        self.room.server.background(self.room.published(publication))

    async def _pump(self, publication: Publication) -> None:
        while True:
            try:
                frame = await publication.media.recv()
            except MediaStreamError:
                return
            publication.heard.append((time.monotonic(), level_dbfs(frame.to_ndarray())))
            for sink in list(publication.sinks.values()):
                sink.put(frame)

    def subscribe(self, publication: Publication) -> None:
        if publication.info.sid in self.senders or publication.owner is self:
            return
        track = ForwardedTrack(publication.info.sid)
        publication.sinks[self.sid] = track
        sender = self.subscriber.addTrack(track)
        # The stream id tells the SDK whose track this is (aiortc keeps one per connection).
        sender._stream_id = f"{publication.owner.sid}|{publication.info.sid}"
        self.senders[publication.info.sid] = sender
        self.unconfirmed.add(publication.info.sid)
        self.renegotiate.set()

    def unsubscribe(self, track_sid: str) -> None:
        sender = self.senders.pop(track_sid, None)
        if sender is None:
            return
        publication = self.room.publication(track_sid)
        if publication is not None:
            publication.sinks.pop(self.sid, None)
        with contextlib.suppress(Exception):  # the connection may be closing already
            self.subscriber.removeTrack(sender)
        self.renegotiate.set()

    # Data

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def forward(data: bytes | str) -> None:
            if isinstance(data, str):
                return
            packet = models.DataPacket()
            packet.ParseFromString(data)
            packet.participant_identity = self.identity
            packet.participant_sid = self.sid
            if packet.HasField("user"):
                packet.user.participant_identity = self.identity
                packet.user.participant_sid = self.sid
            self.room.forward_data(self, packet, channel.label)

    def deliver(self, data: bytes, label: str) -> None:
        channel = self.channels.get(label)
        if channel is not None and channel.readyState == "open":
            channel.send(data)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.negotiator is not None:
            self.negotiator.cancel()
        self.answerer.cancel()
        for publication in self.published.values():
            if publication.pump is not None:
                publication.pump.cancel()
            for sink in publication.sinks.values():
                sink.stop()
        await self.publisher.close()
        await self.subscriber.close()
        await self.ws.close()


class Room:
    def __init__(self, server: LiveKitServer, name: str, departure_timeout: int) -> None:
        self.server = server
        self.departure_timeout = departure_timeout
        """Seconds the room stays once its last participant (other than agents) left."""
        self.closing: asyncio.TimerHandle | None = None
        self.info = models.Room(
            sid=sid("RM"), name=name, creation_time=int(time.time()), creation_time_ms=int(time.time() * 1000)
        )
        self.participants: dict[str, Participant] = {}

    @property
    def name(self) -> str:
        return self.info.name

    def by_identity(self, identity: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    def publication(self, track_sid: str) -> Publication | None:
        for participant in self.participants.values():
            if track_sid in participant.published:
                return participant.published[track_sid]
        return None

    async def join(self, participant: Participant) -> None:
        if self.closing is not None and not participant.is_agent():
            self.closing.cancel()
            self.closing = None
        old = self.by_identity(participant.identity)
        if old is not None:
            await self.remove(old, models.DisconnectReason.DUPLICATE_IDENTITY)
        others = [p.info for p in self.participants.values()]
        self.participants[participant.sid] = participant
        self.info.num_participants = len(self.participants)
        await participant.send(
            join=rtc.JoinResponse(
                room=self.info,
                participant=participant.info,
                other_participants=others,
                server_version=self.server.version,
                server_info=models.ServerInfo(
                    edition=models.ServerInfo.Edition.Standard,
                    version=self.server.version,
                    protocol=16,
                    node_id="ND_test",
                ),
                subscriber_primary=True,
                ping_interval=PING_INTERVAL_SEC,
                ping_timeout=PING_TIMEOUT_SEC,
            )
        )
        await participant.start()
        await self.broadcast_update(participant)
        for other in list(self.participants.values()):
            for publication in other.published.values():
                participant.subscribe(publication)

    async def published(self, publication: Publication) -> None:
        await self.broadcast_update(publication.owner, to_self=True)
        for participant in list(self.participants.values()):
            participant.subscribe(publication)

    async def remove(self, participant: Participant, reason: int, *, notify: bool = True) -> None:
        if self.participants.pop(participant.sid, None) is None:
            return
        self.info.num_participants = len(self.participants)
        self.server.events.append(("left", self.name, participant.identity))
        if notify:
            leave = rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.DISCONNECT)
            await participant.send(leave=leave)
        for track_sid in list(participant.published):
            for other in self.participants.values():
                other.unsubscribe(track_sid)
        await participant.close()
        participant.info.state = models.ParticipantInfo.State.DISCONNECTED
        participant.info.disconnect_reason = reason
        participant.changed()
        await self.broadcast_update(participant)
        if self.closing is None and not any(not p.is_agent() for p in self.participants.values()):
            self.closing = asyncio.get_running_loop().call_later(
                self.departure_timeout, lambda: self.server.background(self.server.close_room(self))
            )

    async def broadcast_update(self, participant: Participant, *, to_self: bool = False) -> None:
        update = rtc.ParticipantUpdate(participants=[participant.info])
        for other in list(self.participants.values()):
            if other is not participant or to_self:
                await other.send(update=update)

    def forward_data(self, sender: Participant, packet: models.DataPacket, label: str) -> None:
        destinations = set(packet.destination_identities)
        data = packet.SerializeToString()
        for other in self.participants.values():
            if other is not sender and (not destinations or other.identity in destinations):
                other.deliver(data, label)


class LiveKitServer(AgentDispatch):
    def __init__(self, api_key: str, api_secret: str, *, media_host: str = "127.0.0.1") -> None:
        super().__init__(api_key, api_secret)
        self.media_host = media_host
        self.rooms: dict[str, Room] = {}
        self.runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()

    def background(self, work: Coroutine) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # aioice offers candidates on every address but loopback; a test room offers one.
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [self.media_host]
        app = web.Application()
        app.router.add_get("/rtc", self.signal)
        app.router.add_get("/rtc/v1", self.not_here)
        app.router.add_get("/rtc/validate", self.validate)
        app.router.add_get("/agent", self.agent)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.url = f"ws://{host}:{self.runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for room in list(self.rooms.values()):
            await self.close_room(room)
        for worker in self.workers:
            await worker.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def claims_of(self, request: web.Request):
        """The claims of the request's token: the SDK sends it as a bearer token, older ones in
        the query."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer":
            token = request.query.get("access_token", "")
        return self.claims(token)

    async def not_here(self, _request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="single peer connection mode is not served")

    async def validate(self, request: web.Request) -> web.Response:
        self.claims_of(request)
        return web.Response(text="success")

    async def signal(self, request: web.Request) -> web.StreamResponse:
        claims = self.claims_of(request)
        if not (claims.video and claims.video.room_join and claims.video.room):
            self.refused.append("no room_join grant")
            raise web.HTTPUnauthorized(text="the token does not allow joining a room")
        if request.query.get("reconnect") == "1":
            # No server-side resume: the SDK then reconnects in full, with a new join.
            raise web.HTTPNotFound(text="no such participant to resume")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        name = claims.video.room
        room = self.rooms.get(name)
        if room is None:
            departure = claims.room_config.departure_timeout if claims.room_config else 0
            room = self.rooms[name] = Room(self, name, departure or DEPARTURE_TIMEOUT_SEC)
            for dispatch in claims.room_config.agents if claims.room_config else []:
                self.background(self.dispatch(name, dispatch.agent_name))
        kind = models.ParticipantInfo.Kind.Value(claims.kind.upper()) if claims.kind else 0
        participant = Participant(room, ws, claims, kind)
        self.events.append(("joined", name, participant.identity))
        await room.join(participant)
        try:
            async for incoming in protobufs(ws, rtc.SignalRequest):
                try:
                    await participant.handle(incoming)
                except Exception:
                    log.exception("%s: %s failed", participant.identity, incoming.WhichOneof("message"))
        finally:
            # The websocket is gone: as livekit-server after its reconnect window, which a
            # server without resume has no use for.
            await room.remove(participant, models.DisconnectReason.SIGNAL_CLOSE, notify=False)
        return ws

    async def close_room(self, room: Room) -> None:
        if self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        if room.closing is not None:
            room.closing.cancel()
        for participant in list(room.participants.values()):
            await room.remove(participant, models.DisconnectReason.ROOM_DELETED)

    def room_info(self, room: str) -> models.Room | None:
        return self.rooms[room].info if room in self.rooms else None

    async def dispatch(self, room: str, agent_name: str) -> None:
        """Dispatch an agent to a room, as livekit-server does for a room's configuration.

        With no worker of that name registered, nothing happens (livekit-server logs "not
        dispatching agent job since no worker is available" and does not try again)."""
        if not any(w.registration.agent_name == agent_name for w in self.workers):
            self.events.append(("no worker", room, agent_name))
            return
        try:
            await self.offer(room, agent_name)
        except (TimeoutError, ConnectionError) as exc:
            self.events.append(("dispatch failed", room, agent_name))
            log.warning("dispatch of %s to %s failed: %r", agent_name, room, exc)
