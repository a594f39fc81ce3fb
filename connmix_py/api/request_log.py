"""Every apiServer request, logged at debug level when it ends: method, path
(never the query string), status, duration and the user named by the
request's basic auth (the name only: the password and the body are never
logged). The outermost middleware, so refusals by access control show too."""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from aiohttp import hdrs, web

from .access import basic_credentials

log = logging.getLogger("connmix.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Not a coroutine: with debug logging off, the route's own awaitable is
# returned as it is (no frame of ours on every request).
@web.middleware
def log_request(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    if not log.isEnabledFor(logging.DEBUG):
        return handler(request)
    return logged(request, handler)


async def logged(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500  # unless the handler answers or raises an HTTP error
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log_line(request.method, request.path, status, started,
                 request.headers.get(hdrs.AUTHORIZATION), request.remote)


def log_line(method: str, path: str, status: int, started: float, authorization: str | None,
             remote: str | None) -> None:
    """The debug line of one request that began at ``started`` (perf_counter)."""
    credentials = basic_credentials(authorization)
    user = credentials[0] if credentials else "-"
    log.debug("api: %s %s %d %.1fms user %s from %s", method, path, status,
              (time.perf_counter() - started) * 1000, user, remote,
              extra={"method": method, "path": path, "status": status, "user": user})
