"""The livekit-agents worker: explicit dispatch to the rooms of paired home devices.

Each device has its own room, `room_<user_id>_<device_id>`, and its token dispatches the agent
named `sudo-voice` there (sudo-api issues them); the worker accepts a job only for the room of a
device sudo-api still knows, then runs that family's voice session in the room. Sessions run as
threads of this one process, not as a process each: a home device stays in its room all day,
and a few hundred idle sessions must cost little.

The LiveKit server and its keys come from the admin's settings (through sudo-api): the worker
waits for them, registers, and starts again with the new ones when the admin changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest, room_io, vad

from sudo_core.config import Settings
from sudo_core.families import VOICE_AGENT
from sudo_core.logs import fields
from sudo_core.metrics import host_port

from . import speech
from .announcements import Announcer
from .hermes import FamilyRuntime
from .session import build_session, load_vad, start_waking, voice_agent
from .sudo_api import LiveKitServer, SudoApi, SudoApiError
from .turns import TurnReporter

log = logging.getLogger(__name__)
SETTINGS_POLL_SEC = 30.0
"""How often the admin's LiveKit settings are read again (seconds)."""
RETRY_SEC = (1.0, 30.0)
"""Backoff between attempts to reach sudo-api or LiveKit: first and longest wait (seconds)."""
DRAIN_SEC = 10
"""On stop, how long conversations in progress may go on (seconds)."""
ROOM_AUDIO = room_io.RoomOptions(
    # The device's words at the VAD's own rate, in frames of 20 ms rather than livekit-agents'
    # 50 ms: resampled once, and the end of a sentence reaches the VAD up to 30 ms sooner.
    audio_input=room_io.AudioInputOptions(sample_rate=16000, frame_size_ms=20)
)


class VoiceBridge:
    def __init__(self, settings: Settings, service_token: str, status: Callable[[str], None]) -> None:
        self.settings = settings
        self.service_token = service_token
        self.status = status
        self.gateway_url = f"http://{settings.runtime.host_address}:{settings.gateway.port}/v1"

    def sudo_api(self) -> SudoApi:
        return SudoApi(self.settings.voice.api_url, self.service_token)

    @functools.cached_property
    def vad(self) -> vad.VAD:
        """One VAD model for all sessions (each opens its own stream on it)."""
        return load_vad(self.settings.voice)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop`, through LiveKit outages and changes of its settings."""
        api = self.sudo_api()
        try:
            self.vad  # noqa: B018 (loaded once, before sessions in several threads want it)
            speech.segment_vad(self.settings.voice.end_of_turn_sec)  # the same, for speech-to-text
            failures = 0
            while not stop.is_set():
                server = await self._livekit_settings(api, stop)
                if server is None:
                    return
                failed = not await self._serve(api, server, stop)
                failures = failures + 1 if failed else 0
                if failed and not stop.is_set():
                    await _sleep_or_stop(stop, backoff(failures))
        finally:
            await api.close()

    async def _livekit_settings(self, api: SudoApi, stop: asyncio.Event) -> LiveKitServer | None:
        attempt = 0
        while not stop.is_set():
            try:
                return await api.livekit()
            except SudoApiError as exc:
                attempt += 1
                wait = backoff(attempt)
                self.status(f"waiting for the LiveKit settings ({exc}); again in {wait:.0f} s")
                log.warning(f"no LiveKit settings yet: {exc}")
                await _sleep_or_stop(stop, wait)
        return None

    async def _serve(self, api: SudoApi, livekit: LiveKitServer, stop: asyncio.Event) -> bool:
        """One worker life; whether it ended for a reason other than failing (stop, new settings)."""
        host, port = host_port(self.settings.voice.http)
        server = AgentServer(
            ws_url=livekit.url,
            api_key=livekit.api_key,
            api_secret=livekit.api_secret,
            job_executor_type=JobExecutorType.THREAD,
            num_idle_processes=1,
            # Load is rooms served against max_sessions, not the CPU: a busy moment on the
            # host must not turn a family away (prod mode wants a threshold below 1).
            load_fnc=lambda server: len(server.active_jobs) / self.settings.voice.max_sessions,
            load_threshold=0.999,
            host=host,
            port=port,
        )
        server.rtc_session(self.entrypoint, agent_name=VOICE_AGENT, on_request=self.on_request)
        server.on("worker_registered", lambda *_: self.status(f"registered with LiveKit at {livekit.url}"))
        self.status(f"connecting to LiveKit at {livekit.url}")
        running = asyncio.create_task(server.run(), name="livekit-worker")
        changed = asyncio.create_task(self._until_changed(api, livekit), name="livekit-settings")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, stopping):
                task.cancel()
            if not running.done():
                if changed.done() and not changed.cancelled():
                    log.info("the LiveKit settings changed: registering again")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.drain(), DRAIN_SEC)
                await server.aclose()
        if running.done() and not running.cancelled() and running.exception() is not None:
            log.warning(f"the LiveKit worker stopped: {running.exception()!r}")
            return False
        return True

    async def _until_changed(self, api: SudoApi, current: LiveKitServer) -> None:
        while True:
            await asyncio.sleep(SETTINGS_POLL_SEC)
            with contextlib.suppress(SudoApiError):  # sudo-api restarting: keep what works
                if await api.livekit() != current:
                    return

    async def on_request(self, request: JobRequest) -> None:
        """Accept a room only if it is a family's."""
        api = self.sudo_api()
        try:
            family = await api.family_of_room(request.room.name)
        except SudoApiError as exc:
            log.warning(f"room {request.room.name}: sudo-api cannot say whose it is: {exc}")
            await request.reject()
            return
        finally:
            await api.close()
        if family is None:
            log.warning(
                f"room {request.room.name} is no family's: refused", extra=fields(room=request.room.name)
            )
            await request.reject()
            return
        await request.accept(name="Sudo", identity=VOICE_AGENT)

    async def entrypoint(self, ctx: JobContext) -> None:
        """A family's conversation in its room, until the room closes; each turn kept in the
        family's Home thread, and what the agent says first said there."""
        api = self.sudo_api()
        turns = TurnReporter(api, ctx.room.name)
        announcer = Announcer(api, ctx.room.name)

        async def close() -> None:
            await announcer.aclose()
            await turns.aclose()  # the last turn's report goes before the client does
            await api.close()

        ctx.add_shutdown_callback(close)
        family = await api.family_of_room(ctx.room.name)
        if family is None:  # deleted between the request and now
            ctx.shutdown("no such family")
            return
        runtime = FamilyRuntime(family.id, api.runtime)
        start_waking(runtime)
        session = build_session(self.settings.voice, family, runtime, self.vad, self.gateway_url)
        turns.attach(session)
        ctx.add_shutdown_callback(session.llm.aclose)  # type: ignore[union-attr]
        await ctx.connect()
        log.info(f"voice session for family {family.id}", extra=fields(family=family.id, room=ctx.room.name))
        await session.start(agent=voice_agent(), room=ctx.room, room_options=ROOM_AUDIO)
        announcer.attach(session)


def backoff(attempt: int) -> float:
    first, longest = RETRY_SEC
    return min(longest, first * 2 ** max(0, attempt - 1))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
