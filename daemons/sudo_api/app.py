"""The aiohttp application: routes, JSON errors for /v1, security headers, /healthz."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from aiohttp import http_exceptions, web
from prometheus_client import Counter

from . import api, family_pages, pages
from .context import REFUSALS, SERVICES, Services, status_of
from .limits import RateLimited
from .media import TOO_LARGE, UPLOAD_BODY_MAX

log = logging.getLogger("sudo-api")

BODY_MAX = 256 * 1024
"""Any request's body, but those of UPLOADS."""
UPLOADS = frozenset({api.chat_send, pages.chat})
"""The handlers that take a photo or voice note: their bodies may reach UPLOAD_BODY_MAX."""
REQUESTS = Counter("sudo_api_requests_total", "HTTP requests answered", ["status"])
SECURITY_HEADERS = {
    # Everything is served from here: scripts, styles, and nothing from a CDN.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """Errors on /v1 are JSON with a message; every response gets the security headers."""
    api_call = request.path.startswith("/v1/")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if not (api_call and exc.status >= 400 and exc.content_type != "application/json"):
            REQUESTS.labels(str(exc.status)).inc()
            exc.headers.update(SECURITY_HEADERS)
            raise
        response = web.json_response({"error": reason(request, exc)}, status=exc.status)
    except REFUSALS as exc:  # a use case refused: said plainly
        status = status_of(exc)
        response = (
            web.json_response({"error": str(exc)}, status=status)
            if api_call
            else web.Response(status=status, text=str(exc))
        )
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        text = "internal error; it has been logged"
        response = (
            web.json_response({"error": text}, status=500)
            if api_call
            else web.Response(status=500, text=text)
        )
    REQUESTS.labels(str(response.status)).inc()
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def same_origin(request: web.Request, handler) -> web.StreamResponse:
    """A browser's state-changing request must come from this site's own pages. A session's
    forms carry its CSRF token, but the login and sign-up forms have no session yet: a
    cross-site POST to /login would log the victim into the attacker's family. Browsers say
    where a request comes from (Sec-Fetch-Site, Origin); clients that are no browser (the
    devices, Twilio, curl) send neither, and a bearer token is never sent on its own."""
    if request.method not in SAFE_METHODS:
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        foreign = site not in (None, "same-origin", "none") or (
            origin is not None and urlsplit(origin).netloc != request.host
        )
        if foreign:
            raise web.HTTPForbidden(text="this request came from another site: use this site's own pages")
    return await handler(request)


@web.middleware
async def whole_body(request: web.Request, handler) -> web.StreamResponse:
    """Read a request's whole body before its handler, within `api.client_timeout_sec` and
    BODY_MAX (UPLOAD_BODY_MAX for the multipart forms of UPLOADS, parsed here too): a client
    that sends it slower is cut off with 408 instead of holding a handler, and what it sent
    reaches no handler."""
    if request.can_read_body:
        # Only a form may carry a file: JSON to the same route keeps the small limit.
        upload = request.match_info.handler in UPLOADS and request.content_type == "multipart/form-data"
        if upload:
            request = request.clone(client_max_size=UPLOAD_BODY_MAX)
        try:
            async with asyncio.timeout(request.app[SERVICES].settings.api.client_timeout_sec):
                if upload:
                    await request.post()  # parsed once: its files are spooled for the handler
                else:
                    await request.read()
        except web.HTTPRequestEntityTooLarge:
            if not upload:
                raise
            raise web.HTTPRequestEntityTooLarge(
                max_size=UPLOAD_BODY_MAX, actual_size=request.content_length or 0, text=TOO_LARGE
            ) from None
        except (ValueError, http_exceptions.HttpProcessingError):  # a form that cannot be parsed
            raise web.HTTPBadRequest(text="the form could not be read") from None
        except TimeoutError:
            # Answered, then the connection closed at once: the rest is not waited for.
            response = web.json_response({"error": "the request's body came too slowly"}, status=408)
            response.force_close()
            response.headers.update(SECURITY_HEADERS)
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
            return response
    return await handler(request)


def reason(request: web.Request, exc: web.HTTPException) -> str:
    """What a /v1 error says: the text it was raised with, else what its status means here."""
    if exc.text and exc.text != f"{exc.status}: {exc.reason}":
        return exc.text
    if exc.status == 404:
        return f"{request.path} is not an API endpoint"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return exc.reason


async def healthz(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    await svc.db.aio(svc.db.query_one, "SELECT 1")
    return web.json_response({"status": "ok"})


def build_app(services: Services) -> web.Application:
    """The public app (`api.listen`, behind Caddy): the website and /v1, without /v1/service."""
    app = web.Application(middlewares=[errors, same_origin, whole_body], client_max_size=BODY_MAX)
    app[SERVICES] = services
    app.add_routes([web.get("/healthz", healthz), *api.routes(), *pages.routes(), *family_pages.routes()])
    return app


def build_service_app(services: Services) -> web.Application:
    """The voice bridge's lookups (/v1/service/*) on `api.service_listen`, loopback only. No
    browser page is served here, so the same-origin check has nothing to guard."""
    app = web.Application(middlewares=[errors, whole_body], client_max_size=BODY_MAX)
    app[SERVICES] = services
    app.add_routes([web.get("/healthz", healthz), *api.service_routes()])
    return app
