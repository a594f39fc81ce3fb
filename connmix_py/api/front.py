"""The apiServer's lean front: every connection of the port is accepted
here, and ``POST /v1/mesh/publish`` and ``POST /v1/mesh/send`` are answered
without aiohttp's per-request machinery (no Request or Response objects, no
middleware chain, no router: profiles put most of a publish's cost there).

The head of each request is read by servers/lean_head.py when it is plain,
else by aiohttp's C parser (a fresh one per request: cheaper than feeding it
the body), which keeps every verdict on an unusual head; the body is taken from this
connection's buffer and handed to the same functions as the aiohttp routes
(http.answer), after the same access check (access.check) and with the same
debug line (request_log.log_line). Bounds are those of http_limits.py: the
head within handshakeTimeout of the accept or of the previous reply, the
body within bodyTimeout of its head (408), maxConnections (503), 16 MiB of
body (413), 431/400 for a head too big or malformed. The head timeout is a
deadline on each connection that one sweep per front checks a few times per
timeout (no timer per request: arming and cancelling one cost 2.4 us).

Any other request (every GET, /ws/v1 upgrades, chunked bodies, ``Expect``,
a query string, ...) hands the connection to aiohttp at that request's
first byte: aiohttp's protocol is made from the runner's server, gets the
transport and every byte from that request on, and keeps the connection.
"""
from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser

from ..config import AccessSettings
from ..eager import at_once_or_handle
from ..servers.http_limits import HttpLimits, bad_head, head_parser, reply, sweep_period
from ..servers.lean_head import Head, from_parsed, read_head
from ..servers.limits import RateLimitedLog, watch_descriptors
from . import access, request_log, requests
from .http import answer

log = logging.getLogger("connmix.api")
http_log = logging.getLogger("connmix.http")  # refusals, like aiohttp's side of the port

MAX_BODY = 16 * 1024 * 1024  # the aiohttp app's client_max_size
# Request head bounds (aiohttp's defaults, as on the rest of the port).
# Input read ahead of the request being answered before reading pauses.
MAX_READ_AHEAD = 64 * 1024

Action = Callable[[Any, Any], Awaitable[Any]]
ACTIONS: dict[str, Action] = {"/v1/mesh/publish": requests.publish, "/v1/mesh/send": requests.send}


class ApiFront:
    """The listening side: what every connection shares."""

    def __init__(self, runner: web.AppRunner, mesh: Any, limits: HttpLimits,
                 current_access: Callable[[], AccessSettings]) -> None:
        self.runner = runner
        self.mesh = mesh
        self.limits = limits
        self.current_access = current_access  # read per request: a reload applies at once
        self.connections: set[ApiConnection] = set()
        self.refusals = RateLimitedLog(http_log)
        self.servers: list[asyncio.base_events.Server] = []
        self.loop = asyncio.get_running_loop()
        self._sweeper: asyncio.Task | None = None

    async def listen(self, bind: str, port: int, reuse_port: bool = False) -> int:
        """Serve on bind:port (0: any); the port listened on."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ApiConnection(self), bind, port, backlog=1024,
                                          reuse_port=reuse_port or None)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening and end the connections still ours (aiohttp's end with the runner)."""
        for server in self.servers:
            server.close()
        self.servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            connection.transport.close()

    def open_connections(self) -> int:
        """Ours and aiohttp's: maxConnections counts both."""
        server = self.runner.server
        return len(self.connections) + (len(server.connections) if server is not None else 0)

    async def _sweep(self) -> None:
        """Close the connections whose next head is late (as a timer per request did)."""
        period = sweep_period(self.limits.head_timeout)
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            for connection in [c for c in self.connections if 0 < c.head_deadline <= now]:
                connection.transport.close()

    def refuse(self, port: int | str, method: str, remote: str, status: int, reason: str) -> None:
        self.refusals.warning((port, status), "port %s: refused %s from %s: %s (%d)",
                              port, method, remote, reason, status)


class ApiConnection(asyncio.Protocol):
    """One apiServer connection while it is ours."""

    __slots__ = ("front", "transport", "remote", "port", "buffer", "fed", "parser", "request", "head_end",
                 "body_end", "head_deadline", "body_timer", "busy", "paused", "over_limit")

    def __init__(self, front: ApiFront) -> None:
        self.front = front
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.remote = ""
        self.port: int | str = "?"
        # From the first byte of the request being read or answered: the read
        # itself when a request came whole (no copy), else a bytearray.
        self.buffer: bytes | bytearray = b""
        self.fed = 0  # bytes of the buffer the parser has seen
        self.parser: HttpRequestParser | None = None
        self.request: Head | None = None  # the head while its body comes and it is answered
        self.head_end = 0
        self.body_end = 0
        self.head_deadline = 0.0  # loop time the next head is due by; 0 while none is awaited
        self.body_timer: asyncio.TimerHandle | None = None
        self.busy = False  # an answer is being computed
        self.paused = False
        self.over_limit = False

    # asyncio's protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        watch_descriptors(transport)
        front = self.front
        front.connections.add(self)
        limit = front.limits.max_connections
        self.over_limit = bool(limit) and front.open_connections() > limit
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        sockname = transport.get_extra_info("sockname")
        self.port = sockname[1] if isinstance(sockname, tuple) else "?"
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._cancel_timers()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if not buffer:
            self.buffer = data
        elif isinstance(buffer, bytearray):
            buffer += data
        else:  # more of a request: from now on added to in place
            self.buffer = bytearray(buffer) + data
        if self.busy:
            if len(self.buffer) - self.body_end > MAX_READ_AHEAD and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        self._go_on()

    # requests -------------------------------------------------------------------

    def _await_head(self) -> None:
        self.parser = None
        self.fed = 0
        front = self.front
        self.head_deadline = front.loop.time() + front.limits.head_timeout

    def _go_on(self) -> None:
        """Read what the buffer holds: heads, bodies, answers, in order."""
        while not self.busy and not self.transport.is_closing():
            if self.request is None and not self._read_head():
                return
            if len(self.buffer) < self.body_end or self.body_end - self.head_end > MAX_BODY:
                self._check_body_size()
                return  # the body timer runs
            if not self._answer() or not self.buffer:  # nothing more read: the usual end
                return

    def _read_head(self) -> bool:
        """Whether a head for the lean path is in; False also when the
        connection was refused or handed over."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n", max(0, self.fed - 3))
        upto = len(buffer) if end < 0 else end + 4
        if upto == self.fed:
            return False
        if self.parser is None:
            if end >= 0:  # the whole head came at once: most often a plain one
                head = read_head(buffer[:upto])
                if head is not None:
                    return self._head_read(head, upto)
            self.parser = head_parser(self)
        try:
            messages, _, _ = self.parser.feed_data(bytes(buffer[self.fed:upto]))
        except BadHttpMessage as exc:
            status, reason = bad_head(exc)
            self._refuse("?", status, reason, status.phrase.lower())
            return False
        self.fed = upto
        if end < 0:
            return False
        if not messages:  # a head our parser read no request from: aiohttp decides
            self._hand_over()
            return False
        return self._head_read(from_parsed(messages[0][0]), upto)

    def _head_read(self, request: Head, upto: int) -> bool:
        """Take a head read up to ``upto`` of the buffer: whether it is one to answer here."""
        length = _lean_body_length(request)
        if length is None:
            self._hand_over()
            return False
        self.head_deadline = 0.0
        if self.over_limit:
            self._refuse(request.method, HTTPStatus.SERVICE_UNAVAILABLE,
                         f"maxConnections {self.front.limits.max_connections} reached", "too many connections")
            return False
        self.request = request
        self.head_end = upto
        self.body_end = upto + length
        timeout = self.front.limits.body_timeout
        if timeout and len(self.buffer) < self.body_end:
            self.body_timer = asyncio.get_running_loop().call_later(timeout, self._body_late)
        return True

    def _check_body_size(self) -> None:
        # As aiohttp's client_max_size: refused once more than that has come.
        request = self.request
        assert request is not None  # called once a head is in
        received = len(self.buffer) - self.head_end
        if received > MAX_BODY:
            self._refuse(request.method, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"request body over {MAX_BODY} bytes",
                         f"maximum request body size {MAX_BODY} exceeded, actual body size {received}")

    def _answer(self) -> bool:
        """Answer the request whose body is in; whether to read on at once."""
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        request = self.request
        assert request is not None
        body = bytes(self.buffer[self.head_end:self.body_end])
        started = time.perf_counter()
        verdict = self._check_access(request)
        if verdict is not None:
            self._respond(verdict, started)
            return not self.transport.is_closing()
        try:  # on one node the mesh finishes without waiting: no task, no loop turn
            outcome = at_once_or_handle(answer(ACTIONS[request.target], self.front.mesh, body))
        except Exception:
            self._failed(request, started)
            return False
        if isinstance(outcome, bytes):
            self._respond(reply(200, outcome, request.version, request.should_close), started)
            return not self.transport.is_closing()
        self.busy = True  # a grid node waits for its broker: later requests wait their turn
        asyncio.get_running_loop().create_task(self._finish(outcome(), started))
        return False

    async def _finish(self, rest: Awaitable[bytes], started: float) -> None:
        request = self.request
        assert request is not None
        try:
            body = await rest
        except Exception:
            self.busy = False
            self._failed(request, started)
            return
        self.busy = False
        self._respond(reply(200, body, request.version, request.should_close), started)
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._go_on()

    def _check_access(self, request: Head) -> bytes | None:
        """The refusal of a request access control does not admit, or None."""
        users = self.front.current_access().users
        if not users:
            return None
        verdict = access.check(users, request.header("authorization"), self.remote,
                               request.method, request.target, "write")
        if not isinstance(verdict, tuple):
            return None
        status, message = verdict
        return reply(status, orjson.dumps({"error": message}), request.version, request.should_close,
                     access.refusal_headers(status), "application/json; charset=utf-8")

    def _failed(self, request: Head, started: float) -> None:
        """A bug of ours: logged with its traceback, 500 (as aiohttp answers) and close."""
        log.exception("api: %s %s failed", request.method, request.target)
        self._respond(reply(500, b"500 Internal Server Error\n\nServer got itself in trouble",
                            request.version, True, content_type="text/plain; charset=utf-8"), started, 500)

    def _respond(self, response: bytes, started: float, status: int | None = None) -> None:
        """Send a reply to the current request; wait for the next head or close."""
        request = self.request
        assert request is not None
        self.transport.write(response)
        if request_log.log.isEnabledFor(logging.DEBUG):
            request_log.log_line(request.method, request.target, status or int(response[9:12]), started,
                                 request.header("authorization"), self.remote)
        buffer = self.buffer
        if type(buffer) is bytearray:
            del buffer[:self.body_end]  # no copy of what follows (bytearray drops its front in place)
        else:  # a read of its own; pipelined requests behind it go on in a bytearray, not sliced each time
            self.buffer = bytearray(buffer[self.body_end:]) if len(buffer) > self.body_end else b""
        self.request = None
        self.body_end = self.head_end = 0
        if request.should_close or status == 500:
            self.transport.close()
            return
        self._await_head()

    def _body_late(self) -> None:
        self.body_timer = None
        request = self.request
        assert request is not None
        self._refuse(request.method, HTTPStatus.REQUEST_TIMEOUT,
                     f"request body not received within {self.front.limits.body_timeout:g}s",
                     "request body not received")

    def _refuse(self, method: str, status: HTTPStatus, reason: str, text: str) -> None:
        """One log line (rate-limited), the reply, close."""
        self._cancel_timers()
        self.front.refuse(self.port, method, self.remote, status, reason)
        self.transport.write(reply(status, (text + "\n").encode(), "1.1", True,
                                   content_type="text/plain; charset=utf-8"))
        self.transport.close()

    def _cancel_timers(self) -> None:
        self.head_deadline = 0.0
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _hand_over(self) -> None:
        """From this request on, the connection is aiohttp's."""
        self._cancel_timers()
        front = self.front
        front.connections.discard(self)
        server = front.runner.server
        assert server is not None
        handler = server()
        transport = self.transport
        handler.connection_made(transport)
        # http_limits' handler; counted here, with the lean connections.
        handler.over_limit = self.over_limit  # type: ignore[attr-defined]
        transport.set_protocol(handler)
        data, self.buffer = bytes(self.buffer), b""
        if self.paused:
            transport.resume_reading()
        handler.data_received(data)


def _lean_body_length(request: Head) -> int | None:
    """The Content-Length of a request the front answers itself; None for
    every other request (aiohttp's)."""
    if request.method != "POST" or request.target not in ACTIONS or request.upgrade:
        return None
    headers = request.headers
    if "expect" in headers or "transfer-encoding" in headers or request.version not in ("1.1", "1.0"):
        return None
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        return None
    return int(length)
