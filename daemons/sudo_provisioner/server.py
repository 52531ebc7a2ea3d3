"""The provisioner's HTTP API, served on its unix socket. Every error is JSON with a clear message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sudo_core import runtime_image
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.metrics import metrics
from sudo_core.provisioner_client import volume_tar_problem
from sudo_core.systemd import Notifier

from .admission import Priority
from .backend import BackendError
from .images import ImageUpgrades, UpgradeRefused
from .runtimes import AtCapacity, Busy, FamilyDisabled, FamilyNotFound, Progress, RuntimeManager, SpawnFailed

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MANAGER = web.AppKey("manager", RuntimeManager)
UPGRADES = web.AppKey("upgrades", ImageUpgrades)


class Activity:
    """Requests in flight, and when the last one ended: the provisioner exits when idle."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_change = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_change


ACTIVITY = web.AppKey("activity", Activity)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    activity = request.app[ACTIVITY]
    activity.in_flight += 1
    try:
        # A body is read whole before the handler, within the client timeout, so a client that
        # stalls is cut off rather than holding a handler and the idle exit forever. A volume
        # upload is streamed by its handler, with the same limit on each pause.
        if request.can_read_body and request.match_info.route.handler is not put_volume:
            try:
                async with asyncio.timeout(request.app[CLIENT_TIMEOUT]):
                    await request.read()
            except TimeoutError:
                return await cut_off(request, error(408, "the request's body came too slowly"))
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason if exc.text is None else exc.text.strip())
    except BadFamilyId as exc:
        return error(400, str(exc))
    except FamilyNotFound as exc:
        return error(404, str(exc))
    except FamilyDisabled as exc:
        return error(403, str(exc))
    except SpawnFailed as exc:
        return error(502, str(exc), logs=exc.logs)
    except AtCapacity as exc:
        return error(503, str(exc))
    except (Busy, UpgradeRefused) as exc:
        return error(409, str(exc))
    except BackendError as exc:
        log.exception(f"{request.method} {request.path}: the engine failed")
        return error(503, f"the Docker engine failed: {exc}")
    except Exception:
        log.exception(f"{request.method} {request.path} failed")
        return error(500, "internal error; see the provisioner's journal")
    finally:
        activity.in_flight -= 1
        activity.last_change = time.monotonic()


async def cut_off(request: web.Request, response: web.Response) -> web.Response:
    """Answer, then close the connection at once: the rest of a stalled body is not waited for."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after what is written has gone
    return response


async def read_json(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """The JSON object body (empty body = {}), refusing anything unexpected."""
    if not request.body_exists:  # not can_read_body: the middleware has already read it
        return {}
    try:
        body = await request.json()
    # RecursionError: nested too deep; LookupError: a charset Python lacks
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, LookupError):
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown field(s): {', '.join(sorted(unknown))}")
    return body


def family_id(request: web.Request) -> uuid.UUID:
    return parse_family_id(request.match_info["family"])


async def ensure(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    family = family_id(request)
    warm_up = request.query.get("warm_up") == "true"
    runtime = await manager.ensure(family, Priority.WARM_UP if warm_up else Priority.WAITING)
    # Healthy just now, whatever the engine said of it as it started.
    return web.json_response(manager.describe(runtime, None) | {"state": "running"})


async def measure_volumes(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MANAGER].measure_volumes())


async def revive(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MANAGER].revive(family_id(request)))


async def list_runtimes(request: web.Request) -> web.Response:
    stats = request.query.get("stats") == "true"
    return web.json_response({"runtimes": await request.app[MANAGER].list(stats=stats)})


async def get_runtime(request: web.Request) -> web.Response:
    family = family_id(request)
    described = await request.app[MANAGER].get(family)
    if described is None:
        return error(404, f"no runtime for family {family}")
    return web.json_response(described)


async def stop_runtime(request: web.Request) -> web.Response:
    family = family_id(request)
    purge = request.query.get("purge", "false")
    if purge not in ("true", "false"):
        return error(400, f"purge must be true or false, got {purge!r}")
    return web.json_response(await request.app[MANAGER].stop(family, purge=purge == "true"))


async def get_volume(request: web.Request) -> web.StreamResponse:
    """A tar of the family's data volume, taken with its runtime paused.

    The response starts once the runtime is paused (header `X-Sudo-Paused`: whether it was
    running), so the client sees how long the pause lasts: until the tar's end.
    """
    family = family_id(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})

    async def paused(running: bool) -> None:
        response.headers["X-Sudo-Paused"] = "true" if running else "false"
        await response.prepare(request)

    try:
        await request.app[MANAGER].export_volume(family, response.write, paused)
    except Exception:
        if not response.prepared:
            raise
        # Too late for a JSON error: cut the connection, so the client sees the tar is incomplete.
        log.exception(f"copying the volume of {family} failed midway")
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def put_volume(request: web.Request) -> web.Response:
    """Replace the family's data volume by the tar in the body (as GET gives it).

    The body is spooled to a temporary file and read through before anything changes, so a body
    that is not a whole tar is refused with the volume untouched.
    """
    family = family_id(request)
    manager = request.app[MANAGER]
    await manager.family(family)
    with tempfile.TemporaryFile() as spool:
        size = 0
        while True:
            try:
                async with asyncio.timeout(request.app[CLIENT_TIMEOUT]):
                    chunk = await request.content.readany()
            except TimeoutError:
                return await cut_off(request, error(408, "the volume stopped coming: nothing was changed"))
            if not chunk:
                break
            await asyncio.to_thread(spool.write, chunk)
            size += len(chunk)
        problem = await asyncio.to_thread(volume_tar_problem, spool)
        if problem:
            return error(400, f"body must be a tar of the volume's contents: {problem}")
        spool.seek(0)
        await manager.import_volume(family, spool)
    return web.json_response({"family": str(family), "bytes": size})


async def evict_idle(request: web.Request) -> web.Response:
    body = await read_json(request, {"idle_sec"})
    idle_sec = body.get("idle_sec")
    if idle_sec is not None and (
        isinstance(idle_sec, bool) or not isinstance(idle_sec, int | float) or idle_sec < 0
    ):
        return error(400, "idle_sec must be a number of seconds, 0 or more")
    return web.json_response(await request.app[MANAGER].evict_idle(idle_sec))


async def reconcile(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MANAGER].reconcile())


CLIENT_TIMEOUT = web.AppKey("client_timeout", float)
RESTARTING = web.AppKey("restarting", asyncio.Lock)
NOTIFIER = web.AppKey("notifier", Notifier)


async def restart_all(request: web.Request) -> web.StreamResponse:
    """Streams progress as NDJSON, one event per line, the last one {"event": "done", ...}."""
    notifier = request.app[NOTIFIER]

    async def run(progress: Progress) -> dict[str, Any]:
        summary = await request.app[MANAGER].restart_all(progress)
        notifier.status(
            f"serving; last restart-all: {summary['restarted']} restarted, {len(summary['failed'])} failed"
        )
        return summary

    return await fleet_change(request, "restart-all", run)


async def image_upgrade(request: web.Request) -> web.StreamResponse:
    """Canary, then the fleet, on the image `ref` names (NDJSON progress, as restart-all); the
    last event's `outcome` is "upgraded" or "rolled back"."""
    ref = (await read_json(request, {"ref"})).get("ref")
    if not isinstance(ref, str) or not runtime_image.REF.fullmatch(ref):
        return error(400, "ref must name a local image, e.g. sudo-hermes:0.20.0")
    return await fleet_change(request, f"upgrade to {ref}", lambda p: request.app[UPGRADES].upgrade(ref, p))


async def image_rollback(request: web.Request) -> web.StreamResponse:
    return await fleet_change(request, "rollback", request.app[UPGRADES].rollback)


async def image_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[UPGRADES].summary())


async def fleet_change(
    request: web.Request, what: str, run: Callable[[Progress], Awaitable[dict[str, Any]]]
) -> web.StreamResponse:
    """Run one change of the whole fleet (restart-all, an upgrade, a rollback: one at a time),
    streaming its progress as NDJSON; it goes on if the caller leaves. A change refused before
    it began is a JSON error, as any other."""
    lock = request.app[RESTARTING]
    if lock.locked():
        return error(409, "a restart-all, an upgrade or a rollback is already running")
    async with lock:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

        async def progress(event: dict[str, Any]) -> None:
            if "done" in event and "total" in event:  # shown by `systemctl status sudo-provisioner`
                request.app[NOTIFIER].status(f"{what}: {event['done']}/{event['total']} done")
            if not response.prepared:
                await response.prepare(request)
            # If the caller left, the change goes on (and is logged) all the same.
            with contextlib.suppress(ConnectionError):
                await response.write(json.dumps(event).encode() + b"\n")

        summary = await run(progress)
        await progress(summary)
        await response.write_eof()
        return response


async def resume_upgrade(app: web.Application, activity: Activity) -> None:
    """At start: roll back an upgrade a stopped provisioner left under way (images.py), holding
    the fleet's lock and counting as a request, so the provisioner does not exit idle meanwhile."""
    activity.in_flight += 1
    try:
        async with app[RESTARTING]:

            async def progress(event: dict[str, Any]) -> None:
                if "done" in event and "total" in event:
                    app[NOTIFIER].status(
                        f"rolling back an interrupted upgrade: {event['done']}/{event['total']}"
                    )

            await app[UPGRADES].resume(progress)
    except Exception:
        log.exception("rolling back the interrupted upgrade failed; it is tried again at the next start")
    finally:
        activity.in_flight -= 1
        activity.last_change = time.monotonic()


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    manager: RuntimeManager,
    upgrades: ImageUpgrades,
    activity: Activity,
    notifier: Notifier,
    client_timeout: float = 60.0,
) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024)
    app[CLIENT_TIMEOUT] = client_timeout
    app[MANAGER] = manager
    app[UPGRADES] = upgrades
    app[ACTIVITY] = activity
    app[NOTIFIER] = notifier
    app[RESTARTING] = asyncio.Lock()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/runtimes", list_runtimes)
    app.router.add_post("/v1/runtimes/restart-all", restart_all)
    app.router.add_post("/v1/runtimes/evict-idle", evict_idle)
    app.router.add_post("/v1/runtimes/reconcile", reconcile)
    app.router.add_get("/v1/runtimes/{family}", get_runtime)
    app.router.add_delete("/v1/runtimes/{family}", stop_runtime)
    app.router.add_post("/v1/runtimes/{family}/ensure", ensure)
    app.router.add_post("/v1/runtimes/{family}/revive", revive)
    app.router.add_post("/v1/volumes/measure", measure_volumes)
    app.router.add_get("/v1/runtimes/{family}/volume", get_volume)
    app.router.add_put("/v1/runtimes/{family}/volume", put_volume)
    app.router.add_get("/v1/image", image_state)
    app.router.add_post("/v1/image/upgrade", image_upgrade)
    app.router.add_post("/v1/image/rollback", image_rollback)
    return app
