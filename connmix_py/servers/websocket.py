"""`protocol: websocket` servers: one asyncio.Protocol per connection,
driving the entry script's callbacks.

A connection's life: the upgrade request is read (servers/lean_head.py when
the head is plain, else aiohttp's C HTTP parser) and checked (path, then a
valid websocket handshake of version 13), ``on_handshake`` may refuse it (403; a Lua error there is a 500), messages
go to ``on_message`` one callback after the other (those of one read in one call into Lua), and
``on_close`` runs exactly once with nil after a clean close and the reason otherwise. RFC 6455 violations close the
connection (ws_codec.py): text that is not UTF-8 with 1007, an unmasked
frame or a bad close code with 1002, a message over maxMessageSize with 1009.

Per connection the server keeps a session (this module), its frame reader
and the Connection: no request, response, reader queue or writer objects,
and no read buffer beyond a frame cut off by the end of a read. A request
parser is made only for a head that is not plain or comes in pieces, and
lives only until the upgrade.

Bounds before the upgrade are those of the HTTP ports (http_limits.py): the
request head within handshakeTimeout, 431 for a head too big, 400 for a
malformed one, 503 over maxConnections, one rate-limited log line each. The
head timeout is a deadline per session that one sweep per server checks a few
times per timeout (no timer per connection).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import struct
from collections import deque
from typing import Awaitable, Callable, cast

from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser

from ..config import ServerSettings
from ..conn import (CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_INVALID_TEXT, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR,
                    CLOSE_TOO_BIG, LUA_ERROR_REASON, Connection, enforce_timeouts)
from ..eager import at_once_or_handle
from ..frames import encode_frame, is_utf8
from ..hub import Hub
from ..lua.memory import LuaMemoryFull
from ..lua.vm import LuaVM
from ..metrics import HANDSHAKE_REFUSED
from ..textproto import first_values
from .closing import forget, run_on_close
from .http_limits import bad_head, head_parser, reply, sweep_period
from .lean_head import Head, from_parsed, read_head
from .limits import RateLimitedLog, watch_descriptors
from .rfc6455 import VERSION, close_code_error
from .ws_codec import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameError, FrameReader

log = logging.getLogger("connmix.websocket")
http_log = logging.getLogger("connmix.http")  # refused upgrade requests, like the API port's

# Frames one connection may queue behind a waiting callback before reading pauses.
MAX_INBOX = 256
# Messages of one read given to on_message in one call into Lua (each is two values on Lua's stack),
# and their bytes: the others' data is in Lua memory while each callback runs, where the memory
# budget sees it, so a batch stays small beside any budget (a bigger message goes alone).
MAX_BATCH = 64
MAX_BATCH_BYTES = 64 * 1024
LOST = "connection lost"  # how every reason for a socket gone without a close begins
LOST_WITHOUT_CLOSE = f"{LOST}: closed by the client without a close frame"
# Seconds a close the server sent waits for the client's close frame.
CLOSE_TIMEOUT = 10.0
# Seconds stop() lets closing sockets flush and their on_close finish before aborting them.
SHUTDOWN_GRACE = 2.0
# Input held while on_handshake runs before reading pauses.
MAX_EARLY_INPUT = 64 * 1024

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PONG = OP_PONG


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()


def handshake_error(request: Head) -> str | None:
    """Why the upgrade request is not a valid websocket handshake (RFC 6455
    4.2.1), or None; the version is checked before (426)."""
    if "upgrade" not in (request.header("connection") or "").lower():
        return "no Connection: upgrade"
    key = request.header("sec-websocket-key")
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            return "bad Sec-WebSocket-Key"
    except (binascii.Error, ValueError):
        return "bad Sec-WebSocket-Key"
    return None


def handshake_tables(request: Head, remote: str) -> tuple[dict, dict]:
    """on_handshake's ``headers`` (first value of each, like Go's Header.Get)
    and ``server`` arguments, from the request head."""
    headers = first_values((name, value) for name, _, value in request.fields)
    server = {
        "Method": request.method, "RequestUri": request.target, "ServerProtocol": "HTTP/" + request.version,
        "Host": request.header("host") or "", "RemoteAddr": remote,
    }
    return headers, server


def http_reply(status: int, text: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete text response that ends the connection."""
    return reply(status, text.encode(), "1.1", True, headers, "text/plain; charset=utf-8")


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return encode_frame(struct.pack("!H", code) + reason, OP_CLOSE)


class WebSocketServer:
    def __init__(self, settings: ServerSettings, vm: LuaVM, hub: Hub,
                 next_client_id: Callable[[], str], reuse_port: bool = False) -> None:
        self.settings = settings
        self.vm = vm
        self.hub = hub
        self.next_client_id = next_client_id
        # -p workers all listen on the yaml's port (SO_REUSEPORT): the kernel spreads connections.
        self.reuse_port = reuse_port
        self.counters = hub.metrics.server(self)
        # Open connections, until on_close has run (the sweeper enforces the
        # read and write timeouts, and the close timeout, on them).
        self.conns: set[Connection] = set()
        # Every TCP connection, upgraded or not (maxConnections counts them all).
        self.sessions: set[WebSocketSession] = set()
        # Sessions whose request head is not in yet (the head sweep's).
        self.awaiting_head: set[WebSocketSession] = set()
        self.port = settings.port
        self.refusals = RateLimitedLog(http_log)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self._head_sweeper: asyncio.Task | None = None
        self._drain: asyncio.Future | None = None  # while stop() waits for the connections to end

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: WebSocketSession(self), self.settings.bind,
                                                self.settings.port, backlog=1024,
                                                reuse_port=self.reuse_port or None)
        if self.settings.port == 0:  # tests ask for any free port
            self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(
            enforce_timeouts(self.conns, lambda conn, now: conn.session.check_close(now)))
        self._head_sweeper = asyncio.create_task(self._sweep_heads())

    async def _sweep_heads(self) -> None:
        """Close the connections whose request head is late (as a timer per connection did)."""
        loop = asyncio.get_running_loop()
        period = sweep_period(self.settings.handshake_timeout)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for session in [s for s in self.awaiting_head if s.head_deadline <= now]:
                self.awaiting_head.discard(session)
                session.transport.close()

    async def stop_accepting(self) -> None:
        """Close the listening socket; open connections go on."""
        if self._server:
            self._server.close()

    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def close_clients(self) -> None:
        for conn in list(self.conns):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")

    async def stop(self) -> None:
        """The engine's last step, after engine.shutdownGrace: the client's
        answer to our 1001 is not awaited any longer; what is queued (the
        1001) is flushed and the socket closed, and SHUTDOWN_GRACE bounds
        that flush and the on_close runs before the rest is aborted."""
        for sweeper in (self._sweeper, self._head_sweeper):
            if sweeper:
                sweeper.cancel()
        await self.stop_accepting()
        self.close_clients()
        for session in list(self.sessions):
            if session.reader is None:  # not upgraded: nothing to say
                session.transport.abort()
            else:
                session.transport.close()
        if not await self._drained(SHUTDOWN_GRACE):
            for session in list(self.sessions):
                session.transport.abort()
            await self._drained(SHUTDOWN_GRACE)
        if self._server:
            await self._server.wait_closed()

    async def _drained(self, timeout: float) -> bool:
        """Wait until every socket is gone and every on_close has run."""
        if self.sessions or self.conns:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            except asyncio.TimeoutError:
                return False
        return True

    def session_ended(self, session: "WebSocketSession") -> None:
        """A socket is gone, its on_close run: wake stop() once all are."""
        self.sessions.discard(session)
        if session.conn is not None:
            self.conns.discard(session.conn)
        drain = self._drain
        if drain is not None and not drain.done() and not self.sessions and not self.conns:
            drain.set_result(None)

    def refuse(self, remote: str, status: int, reason: str) -> None:
        """One log line (rate-limited) for a refused upgrade request."""
        self.refusals.warning((self.port, status), "port %s: refused a request from %s: %s (%d)",
                              self.port, remote, reason, status)


class WebSocketSession(asyncio.Protocol):
    """One TCP connection: the upgrade, then its frames and the worker
    running its callbacks in order."""

    __slots__ = ("server", "transport", "remote", "conn", "parser", "head_deadline", "early", "reader",
                 "worker", "inbox", "paused", "close_sent", "close_started", "client_code")

    def __init__(self, server: WebSocketServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.remote = ""
        self.conn: Connection | None = None  # made once the request head is in
        self.parser: HttpRequestParser | None = None  # a head not read at once, until it is in
        self.head_deadline = 0.0  # loop time the request head is due by; 0 once it is in (or refused)
        self.early: bytearray | None = None  # input that came while on_handshake ran
        self.reader: FrameReader | None = None  # from the upgrade on
        self.worker: asyncio.Task | None = None  # set while a callback waits
        # Frames that came while a callback waited (made at the first).
        self.inbox: deque[tuple[int, bytes]] | None = None
        self.paused = False
        self.close_sent = False
        self.close_started: float | None = None
        self.client_code: int | None = None  # of the client's close frame

    # -- the upgrade ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        watch_descriptors(transport)
        self.server.sessions.add(self)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else ""
        server = self.server
        self.head_deadline = asyncio.get_running_loop().time() + server.settings.handshake_timeout
        server.awaiting_head.add(self)

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            self._frames_received(data)
        elif self.head_deadline:
            self._head_received(data)
        elif self.early is not None:  # on_handshake runs
            self.early += data
            if len(self.early) > MAX_EARLY_INPUT and not self.paused:
                self.transport.pause_reading()
                self.paused = True

    def _head_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # the first bytes: most often a whole plain head
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = read_head(data[:end + 4])
                if head is not None:
                    self._head_read(head, data[end + 4:])
                    return
            parser = self.parser = head_parser(self)
        try:
            messages, _, tail = parser.feed_data(data)
        except BadHttpMessage as exc:
            status, reason = bad_head(exc)
            self._refuse(status, status.phrase.lower() + "\n", reason)
            return
        if messages:
            self._head_read(from_parsed(messages[0][0]), tail)

    def _head_read(self, request: Head, tail: bytes) -> None:
        """The request head is in: refuse it, or run on_handshake."""
        self.parser = None
        self.head_deadline = 0.0
        self.server.awaiting_head.discard(self)
        answer = self._check_request(request)
        if answer is not None:
            self.transport.write(answer)
            self.transport.close()
            return
        self.early = bytearray(tail)
        # Most on_handshake calls return without waiting: then no task and no loop turn.
        rest = at_once_or_handle(self._handshake(request))
        if rest is not None:
            asyncio.get_running_loop().create_task(rest())

    def _refuse(self, status: int, text: str, reason: str) -> None:
        """Refuse the request: one log line, the reply, close."""
        self.parser = None
        self.head_deadline = 0.0
        self.server.refuse(self.remote, status, reason)
        self.transport.write(http_reply(status, text))
        self.transport.close()

    def _check_request(self, request: Head) -> bytes | None:
        """The reply refusing a request that is not a websocket upgrade we
        serve, or None to go on to on_handshake."""
        server = self.server
        limit = server.settings.max_connections
        if limit and len(server.sessions) > limit:
            server.refuse(self.remote, 503, f"maxConnections {limit} reached")
            return http_reply(503, "too many connections\n")
        if request.path != server.settings.path:
            return http_reply(404, "404: Not Found")
        if request.method != "GET":
            return http_reply(405, "405: Method Not Allowed", {"Allow": "GET"})
        if (request.header("upgrade") or "").lower() != "websocket":
            return http_reply(400, "websocket upgrade expected\n")
        version = request.header("sec-websocket-version")
        if version is not None and version.strip() != VERSION:
            return http_reply(426, f"unsupported websocket version {version!r} (only {VERSION})\n",
                              {"Sec-WebSocket-Version": VERSION})
        if version is None or handshake_error(request) is not None:
            return http_reply(400, "invalid websocket handshake\n")
        return None

    async def _handshake(self, request: Head) -> None:
        server, settings = self.server, self.server.settings
        conn = Connection(server.next_client_id(), server, self.remote, settings.max_send_queue,
                          settings.write_timeout, settings.read_timeout, session=self, logger=log)
        self.conn = conn
        if log.isEnabledFor(logging.DEBUG):  # most connections never log a line: no logger made
            conn.log.debug("accepted on port %d, %s %s", server.port, request.method, request.path)
        server.hub.add(conn)
        try:
            refused = await self._verdict(request, conn)
        except BaseException:
            self._forget()
            raise
        if refused is not None or self.transport.is_closing():  # refused, or the client left meanwhile
            if refused is not None:
                conn.mark_closed(HANDSHAKE_REFUSED)  # for the metrics' close reason
                self.transport.write(refused)
                self.transport.close()
            self._forget()
            return
        key = request.header("sec-websocket-key")
        assert key is not None  # checked by _check_request
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                             + accept_key(key).encode() + b"\r\n\r\n")
        self.reader = FrameReader(settings.max_message_size)
        conn.open(self.transport, self._close_requested)
        server.conns.add(conn)
        early, self.early = self.early, None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        conn.read_since = asyncio.get_running_loop().time()
        if early:
            self._frames_received(bytes(early))

    async def _verdict(self, request: Head, conn: Connection) -> bytes | None:
        """Run on_handshake; a reply refusing the upgrade, or None to accept."""
        vm = self.server.vm
        headers, server = handshake_tables(request, conn.remote_addr)
        try:
            accepted = await vm.call_handshake(conn, headers, server)
        except LuaMemoryFull as exc:  # data the script keeps fills its Lua state
            conn.log.error("%s: on_handshake not run, refused with 503: %s", vm.name, exc)
            return http_reply(503, "server busy\n")
        if conn.close_code == CLOSE_INTERNAL_ERROR:  # the Lua error is logged by the VM
            conn.log.debug("handshake refused: 500, on_handshake failed")
            return http_reply(500, "on_handshake failed\n")
        if accepted is False or conn.closing:
            conn.log.debug("handshake refused: 403 by on_handshake")
            return http_reply(403, "forbidden\n")
        if log.isEnabledFor(logging.DEBUG):
            conn.log.debug("handshake accepted")
        return None

    def _forget(self) -> None:
        """A connection that never opened: no on_close, gone from the hub and the VM."""
        conn = self.conn
        assert conn is not None
        self.early = None
        forget(self.server.vm, conn)

    # -- frames -------------------------------------------------------------------------

    def _frames_received(self, data: bytes) -> None:
        conn, reader = self.conn, self.reader
        assert conn is not None and reader is not None
        if conn.close_code is not None and not self.close_sent:
            return  # closed by the server meanwhile
        failure: FrameError | None = None
        try:
            frames = reader.feed(data)
        except FrameError as exc:
            frames, failure = exc.frames, exc
        # The replies to this read's frames leave in one write.
        conn.hold()
        try:
            index, count = 0, len(frames)
            while index < count:
                opcode, payload = frames[index]
                # Messages one after another go to on_message in one call into Lua.
                if (opcode == OP_TEXT or opcode == OP_BINARY) and self.worker is None and not conn.closing:
                    handled = self._messages(conn, frames, index)
                    if handled:
                        index += handled
                        continue
                if not self._frame(conn, opcode, payload):
                    return
                index += 1
        finally:
            conn.release()
        if failure is not None:
            self._failed(conn, failure)
        elif frames and self.worker is None and not conn.closing:
            conn.read_since = asyncio.get_running_loop().time()

    def _messages(self, conn: Connection, frames: list[tuple[int, bytes]], start: int) -> int:
        """Run on_message for the text and binary frames from ``start`` on,
        up to the next control frame or the first text that is not UTF-8
        (left to _frame, as is the rest), in one call into Lua; how many were
        handled (0: none could be). The messages after one that waits queue
        behind it; those after one that closed the connection are dropped."""
        messages: list[bytes] = []
        size = 0
        for index in range(start, min(len(frames), start + MAX_BATCH)):
            opcode, payload = frames[index]
            if size + len(payload) > MAX_BATCH_BYTES and messages:
                break
            if opcode == OP_TEXT:
                # (isascii first: most text, no call.) A fragmented message comes whole.
                if not payload.isascii() and not is_utf8(payload):
                    break
                messages += (b"text", payload)
            elif opcode == OP_BINARY:
                messages += (b"binary", payload)
            else:
                break
            size += len(payload)
        if not messages:
            return 0
        handled, pending = self.server.vm.call_messages(conn, messages, size)
        if handled * 2 < len(messages):
            size = sum(len(payload) for _, payload in frames[start:start + handled])
        traffic = self.server.counters.traffic
        traffic.messages_in += handled
        traffic.bytes_in += size
        if pending is not None:
            self._wait_for(conn, pending)
        return handled

    def _wait_for(self, conn: Connection, pending: Awaitable) -> None:
        """A callback waits: the worker finishes it, then what queues behind it."""
        conn.read_since = None  # a running callback is not an idle client
        self.worker = asyncio.get_running_loop().create_task(self._run_in_order(conn, pending))

    def _frame(self, conn: Connection, opcode: int, payload: bytes) -> bool:
        """Handle one message or control frame; False once the connection ends."""
        if self.close_sent:  # waiting for the client's close: the rest is dropped
            if opcode == OP_CLOSE:
                self.transport.close()
                return False
            return True
        if opcode == OP_TEXT or opcode == OP_BINARY:
            binary = opcode == OP_BINARY
            traffic = self.server.counters.traffic
            traffic.messages_in += 1
            traffic.bytes_in += len(payload)
            # (isascii first: most text, no call.) A fragmented message comes whole.
            if not binary and not payload.isascii() and not is_utf8(payload):
                self._fail(conn, CLOSE_INVALID_TEXT, "invalid UTF-8 in a text message")
                return False
            # on_message now, or after the callbacks before it.
            if self.worker is None:
                pending = self.server.vm.call_message(conn, binary, payload)
                if pending is not None:
                    self._wait_for(conn, pending)
            else:
                self._queue(opcode, payload)
        elif opcode == OP_PING:
            if not self.paused:
                conn.write_frame(encode_frame(payload, _PONG))
            else:  # reading is paused behind a flood: what came after it waits its turn
                self._queue(OP_PING, payload)
        elif opcode == OP_CLOSE:  # from the client: clean unless its code is invalid
            code = int.from_bytes(payload[:2], "big") if payload else 0
            invalid = close_code_error(code)
            if invalid is None and not is_utf8(payload[2:]):
                invalid = "close reason not UTF-8"
            if invalid is not None:
                self._fail(conn, CLOSE_PROTOCOL_ERROR, f"protocol error (1002): {invalid}")
                return False
            self.client_code = code
            conn.release()  # the replies before the close go first
            conn.mark_closed(None)
            self._send_close(CLOSE_NORMAL)
            self.transport.close()
            return False
        return True  # a pong: nothing to do

    def _queue(self, opcode: int, payload: bytes) -> None:
        """Keep a frame for the worker, behind the callback that waits."""
        inbox = self.inbox
        if inbox is None:
            inbox = self.inbox = deque()
        inbox.append((opcode, payload))
        if len(inbox) >= MAX_INBOX and not self.paused:  # a flood: stop reading until it drains
            self.transport.pause_reading()
            self.paused = True

    async def _run_in_order(self, conn: Connection, pending: Awaitable) -> None:
        """Finish the waiting callback, then the frames that queued behind it.
        Frames still queued when the server closed the connection are dropped;
        those a client sent before leaving are still handled."""
        vm = self.server.vm
        try:
            await pending
            inbox = self.inbox
            while inbox and (not conn.closing or conn.close_code is None):
                opcode, data = inbox.popleft()
                if opcode == OP_PING:
                    conn.write_frame(encode_frame(data, _PONG))
                    continue
                pending = vm.call_message(conn, opcode == OP_BINARY, data)
                if pending is not None:
                    await pending
        finally:
            self.worker = None
            self.inbox = None
        if self.paused and self.early is None:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        conn.read_since = asyncio.get_running_loop().time()  # idle from now on

    # -- closing ------------------------------------------------------------------------

    def _fail(self, conn: Connection, code: int, text: str) -> None:
        """Close for a protocol violation; ``text`` is logged and goes to on_close."""
        conn.log.warning("closing: %s", text)
        conn.close(code, text)
        self.transport.close()  # nothing more is read from a client that broke the protocol

    def _failed(self, conn: Connection, exc: FrameError) -> None:
        if exc.code == CLOSE_TOO_BIG:
            text = f"message too big (limit {self.server.settings.max_message_size} bytes)"
        else:
            text = f"protocol error ({exc.code}): {exc}"
        self._fail(conn, exc.code, text)

    def _close_requested(self, code: int) -> None:
        """conn.close(): the close frame goes out after the frames queued;
        the socket closes when the client answers (or after CLOSE_TIMEOUT).
        The messages of the read after the callback closing it are dropped."""
        conn = self.conn
        assert conn is not None  # open() gave conn this closer
        self.server.vm.connection_closing(conn)
        self._send_close(code)

    def _send_close(self, code: int) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self.close_sent = True
        self.close_started = asyncio.get_running_loop().time()
        # Only a Lua error's close says why; the others keep CONNMIX's empty reason.
        reason = LUA_ERROR_REASON.encode() if code == CLOSE_INTERNAL_ERROR else b""
        self.transport.write(close_frame(code, reason))
        if self.paused and self.early is None:  # the client's close must be read
            self.paused = False
            self.transport.resume_reading()

    def check_close(self, now: float) -> None:
        """Called about once a second by the sweeper: a client that does not
        answer our close within CLOSE_TIMEOUT is closed anyway, and a closed
        socket whose last frames do not flush within writeTimeout is dropped
        (before the socket closes, conn.check_timeouts bounds the flush)."""
        started, transport, conn = self.close_started, self.transport, self.conn
        if started is None or conn is None:
            return
        if not transport.is_closing():
            if now - started > CLOSE_TIMEOUT:
                transport.close()
        elif (conn.write_timeout and now - started > conn.write_timeout
              and transport.get_write_buffer_size()):
            conn.abort(f"slow client: the close could not flush within {conn.write_timeout:g}s")

    def eof_received(self) -> bool:
        return False  # a half-close without a close frame ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.awaiting_head.discard(self)
        self.parser = None
        conn = self.conn
        if conn is None or self.reader is None:  # never upgraded (on_handshake may still run)
            self.server.session_ended(self)
            return
        if not conn.closing:
            conn.mark_closed(f"{LOST}: {exc}" if exc is not None else LOST_WITHOUT_CLOSE)
        elif exc is not None and self.client_code is None and not self.close_sent:
            conn.mark_closed(f"{LOST}: {exc}")
        asyncio.get_running_loop().create_task(self._finish(conn))

    async def _finish(self, conn: Connection) -> None:
        """After the socket is gone: end waits, let the worker finish, run on_close."""
        vm = self.server.vm
        try:
            # The code the server sent, else the client's; none when the socket was lost.
            lost = (conn.close_err or "").startswith(LOST)
            conn.log_closed(None if lost else conn.close_code if conn.close_code is not None
                            else self.client_code)
            await run_on_close(vm, conn, self.worker)
        finally:
            forget(vm, conn)
            self.reader = None
            self.server.session_ended(self)
