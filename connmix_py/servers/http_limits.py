"""Bounds on the aiohttp ports (websocket servers and the apiServer): what a
client that connects and then sends slowly, too much or nothing may cost.

- the request head (line and headers) must arrive within ``head_timeout``
  seconds of the accept, or of the previous response on a kept-alive
  connection; else the connection is closed;
- a request body must arrive within ``body_timeout`` seconds of its head
  (408 and close);
- over ``max_connections`` open connections a new one gets 503;
- a head too big gets 431, a malformed one 400: one log line, no traceback.

Refusals are logged at most once a second per port and kind (a flood costs
one line a second, with a count). The websocket server and the apiServer's
lean front read heads and answer with their own protocols: head_parser,
bad_head and reply are theirs, with the same bounds and answers.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http import HTTPStatus

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import HttpRequestParser  # the C parser when aiohttp has its extensions
from aiohttp.web_protocol import RequestHandler

from .limits import RateLimitedLog, watch_descriptors

log = logging.getLogger("connmix.http")

# Request head bounds (aiohttp's defaults), where our own protocols read heads.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128

# What a body that does not arrive in time gets, written straight to the
# socket: the handler may be blocked reading it.
_BODY_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                       b"Content-Type: text/plain\r\nContent-Length: 27\r\n\r\n"
                       b"request body not received\r\n")


@dataclass(frozen=True)
class HttpLimits:
    head_timeout: float
    max_connections: int = 0  # 0: no limit
    body_timeout: float = 0  # 0: no limit


def limited_runner(app: web.Application, limits: HttpLimits) -> web.AppRunner:
    """An AppRunner for ``app`` whose connections are bounded by ``limits``."""
    return _LimitedRunner(app, limits)


class _LimitedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: HttpLimits) -> None:
        # aiohttp's keep-alive timer is the one that runs while a connection
        # waits for a request head: from the accept, and after each response.
        super().__init__(app, access_log=None, handle_signals=False,
                         keepalive_timeout=limits.head_timeout)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # starts the app
        return _LimitedServer(self.limits, app_server)


class _LimitedServer(web.Server):
    """aiohttp's low-level server for the app, making bounded handlers and
    guarding the app's request handler."""

    def __init__(self, limits: HttpLimits, app_server: web.Server) -> None:
        super().__init__(self._guard, request_factory=app_server.request_factory,
                         handler_cancellation=app_server.handler_cancellation,
                         loop=app_server._loop, **app_server._kwargs)
        self.limits = limits
        self.app_handler = app_server.request_handler
        self.refusals = RateLimitedLog(log)

    def __call__(self) -> RequestHandler:
        return _LimitedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        watch_descriptors(transport)
        limit = self.limits.max_connections
        handler.over_limit = bool(limit) and len(self._connections) > limit
        # aiohttp before 3.14 starts its keep-alive timer only after a
        # response, leaving the first request untimed: time it here.
        handler.first_head = self._loop.call_later(self.limits.head_timeout, _first_head_late, handler)

    def refuse(self, request: web.BaseRequest, status: int, reason: str) -> None:
        """One log line (rate-limited) for a refused request."""
        port = _local_port(request)
        self.refusals.warning((port, status), "port %s: refused %s from %s: %s (%d)",
                              port, request.method, request.remote, reason, status)

    async def _guard(self, request: web.BaseRequest) -> web.StreamResponse:
        request.protocol.first_head.cancel()
        if request.protocol.over_limit:
            self.refuse(request, 503, f"maxConnections {self.limits.max_connections} reached")
            return _closing_response(503, "too many connections")
        timeout = self.limits.body_timeout
        if not timeout or not request.body_exists:
            return await self.app_handler(request)
        late = asyncio.get_running_loop().call_later(timeout, self._body_late, request)
        try:
            return await self.app_handler(request)
        except Exception:
            if request.protocol.body_timed_out:
                # The body was cut off: what the handler says goes nowhere.
                return _closing_response(408, "request body not received")
            raise
        finally:
            late.cancel()

    def _body_late(self, request: web.BaseRequest) -> None:
        if request.content.is_eof():
            return
        self.refuse(request, 408, f"request body not received within {self.limits.body_timeout:g}s")
        protocol = request.protocol
        protocol.body_timed_out = True
        if protocol.transport is not None and not request.writer.output_size:
            protocol.transport.write(_BODY_TIMEOUT_REPLY)
        protocol.force_close()


class _LimitedHandler(RequestHandler):
    """One connection: a malformed or oversized request head is answered
    with one log line instead of aiohttp's traceback."""

    over_limit = False  # set by the server when it accepts the connection
    body_timed_out = False

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, BadHttpMessage) or request.writer.output_size:
            return super().handle_error(request, status, exc, message)
        status, reason = bad_head(exc)
        self._manager.refuse(request, status, reason)
        return _closing_response(status, status.phrase.lower())


def sweep_period(head_timeout: float) -> float:
    """How often our protocols look for heads past their deadline: a few
    times per timeout, at least once a second (a late head is closed within
    a quarter of the timeout, or a second, after it)."""
    return min(1.0, head_timeout / 4)


def head_parser(protocol: Any) -> HttpRequestParser:
    """aiohttp's request-head parser, for a protocol of ours that reads heads itself."""
    # Typed for aiohttp's protocols; it keeps ours only for a body it is never fed.
    return HttpRequestParser(protocol, asyncio.get_running_loop(), 2 ** 16, max_line_size=MAX_LINE_SIZE,
                             max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS)


def bad_head(exc: BadHttpMessage) -> tuple[HTTPStatus, str]:
    """A malformed head's status (431 for a line or a header section over the
    bounds, else 400) and the one line the log says about it."""
    too_big = isinstance(exc, LineTooLong) or "Too many headers" in str(exc)
    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE if too_big else HTTPStatus.BAD_REQUEST
    return status, (str(exc).splitlines() or [type(exc).__name__])[0]


def _first_head_late(handler: RequestHandler) -> None:
    if handler.transport is not None:
        handler.force_close()


def _closing_response(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text + "\n")
    response.force_close()
    return response


def _local_port(request: web.BaseRequest) -> int | str:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) else "?"


_PHRASES = {status.value: status.phrase for status in HTTPStatus}  # a dict lookup, not an enum call per reply


def reply(status: int, body: bytes, version: str, close: bool, headers: dict[str, str] | None = None,
          content_type: str = "application/json") -> bytes:
    """A whole response, for a protocol of ours that answers without aiohttp."""
    if headers is None:  # the usual reply: its head but for the length is made once
        key = (status, version, close, content_type)
        start = _REPLY_STARTS.get(key)
        if start is None:
            start = _REPLY_STARTS[key] = _reply_start(status, version, close, None, content_type)
    else:
        start = _reply_start(status, version, close, headers, content_type)
    return b"%sContent-Length: %d\r\n\r\n%s" % (start, len(body), body)


# Heads of replies without extra headers but for the Content-Length (a few
# statuses, two versions, close or not: a small, bounded table).
_REPLY_STARTS: dict[tuple[int, str, bool, str], bytes] = {}


def _reply_start(status: int, version: str, close: bool, headers: dict[str, str] | None,
                 content_type: str) -> bytes:
    """A reply's status line and headers, all but the Content-Length that ends them."""
    head = [f"HTTP/{version} {status} {_PHRASES[status]}", f"Content-Type: {content_type}"]
    if close:
        head.append("Connection: close")
    elif version == "1.0":  # a 1.0 client asked for keep-alive
        head.append("Connection: keep-alive")
    head.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(head) + "\r\n").encode()
