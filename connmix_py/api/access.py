"""access.users on the whole apiServer: HTTP basic auth, the caller's host,
and the role a request needs.

A middleware, so every route (the HTTP API, the /ws/v1 upgrade, any route
added later) is covered unless it is listed in OPEN_PATHS. The users are read
from ``current()`` on every request: replacing the settings (a reload)
takes effect on the next request without rebuilding the app.

Order: no or wrong credentials -> 401 with ``WWW-Authenticate``; right
credentials from a host outside the user's pattern, or without the role the
request needs -> 403. GET and HEAD need ``read``; everything else, and a
WebSocket upgrade (the API's WebSocket publishes, sends and consumes), needs
``write``. Passwords are compared in constant time and never logged. The
admitted user is kept on the request (``USER``) so a /ws/v1 session can be
ended when a reload revokes it (``still_admits``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
from typing import Awaitable, Callable

from aiohttp import hdrs, web

from ..config import AccessSettings, AccessUser

log = logging.getLogger("connmix.api.access")

REALM = "connmix"
# Load balancers and orchestrators probe these without credentials; they say
# only "up" and "ready or not, and why" (stopping, a server not listening).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
READ_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The AccessUser a request was admitted as; absent while access is open.
USER = web.RequestKey("access_user", AccessUser)


def required_role(request: web.Request) -> str:
    if request.method in READ_METHODS and not _is_websocket_upgrade(request):
        return "read"
    return "write"


def _is_websocket_upgrade(request: web.Request) -> bool:
    # Any mention counts: broader than what aiohttp accepts as an upgrade,
    # so no spelling of the header passes here as a plain read.
    tokens = request.headers.get(hdrs.UPGRADE, "").lower().split(",")
    return any(token.strip() == "websocket" for token in tokens)


def authenticate(users: tuple[AccessUser, ...], header: str | None) -> tuple[str | None, AccessUser | None]:
    """(the username given or None, the user when the password is right)."""
    given = basic_credentials(header)
    if given is None:
        return None, None
    login, password = given
    # Every user is compared, and digests have one length, so the time taken
    # says nothing about which names exist or how much of a password matched.
    given_password = hashlib.sha256(password.encode()).digest()
    found = None
    for user in users:
        name_ok = hmac.compare_digest(user.username.encode(), login.encode())
        password_ok = hmac.compare_digest(hashlib.sha256(user.password.encode()).digest(), given_password)
        if name_ok and password_ok:
            found = user
    return login, found


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header (UTF-8, as the
    client library and browsers send it); None when there is none or it is
    malformed."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, colon, password = decoded.partition(":")
    return (login, password) if colon else None


def refusal_headers(status: int) -> dict[str, str] | None:
    """The headers a refusal adds: the basic-auth challenge of a 401."""
    return {hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'} if status == 401 else None


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=refusal_headers(status))


def is_loopback(bind: str) -> bool:
    """Only this machine can reach a listener on bind."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check(users: tuple[AccessUser, ...], authorization: str | None, caller: str | None,
          method: str, path: str, role: str) -> AccessUser | tuple[int, str]:
    """The user a request is admitted as, or (status, message) refusing it
    (logged here); the aiohttp middleware and the lean front both ask it."""
    login, user = authenticate(users, authorization)
    if user is None:
        if login is not None:  # the password stays out of the log, always
            log.warning("api: wrong credentials for user %r from %s", login, caller)
        return 401, "unauthorized: credentials required"
    if not user.host.matches(caller):
        log.warning("api: user %r refused from %s (host %s)", user.username, caller, user.host.text)
        return 403, f"forbidden: user {user.username!r} may not connect from {caller}"
    if role not in user.roles:
        log.warning("api: user %r lacks role %s for %s %s", user.username, role, method, path)
        return 403, f"forbidden: user {user.username!r} lacks the {role} role"
    return user


async def _checked(request: web.Request, handler: Handler,
                  users: tuple[AccessUser, ...]) -> web.StreamResponse:
    verdict = check(users, request.headers.get(hdrs.AUTHORIZATION), request.remote,
                    request.method, request.path, required_role(request))
    if isinstance(verdict, tuple):
        return _refuse(*verdict)
    request[USER] = verdict
    return await handler(request)


def middleware(current: Callable[[], AccessSettings]):
    # Not a coroutine: with nothing to check, the route's own awaitable is
    # returned as it is (no frame of ours on every request).
    @web.middleware
    def check_access(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        users = current().users
        if not users or request.path in OPEN_PATHS:
            return handler(request)
        return _checked(request, handler, users)

    return check_access


def still_admits(settings: AccessSettings, user: AccessUser | None, remote: str | None) -> bool:
    """Whether a /ws/v1 session opened as ``user`` from ``remote`` (user
    None: access was open then) would be let in by ``settings``: the user
    is still there with the same password, the write role and a host
    pattern matching the session's address."""
    if not settings.users:
        return True
    if user is None:
        return False
    now = next((other for other in settings.users if other.username == user.username), None)
    return (now is not None and now.password == user.password and "write" in now.roles
            and now.host.matches(remote))
