"""`protocol: socket` servers: raw TCP connections framed by the entry script.

The engine owns the connections and the bytes; the script owns the wire
protocol (SPEC 3, "socket protocol callbacks"):

    bytes in -> input buffer -> protocol_input(buf) -> n
             -> protocol_decode(first n bytes) -> on_message(msg) -> next packet
    publishes, mesh.send, the APIs -> protocol_encode(data) -> socket
    conn:send(bytes) -> socket (the script framed them already)

Callbacks of one connection run one at a time, in arrival order: input that
arrives while a callback waits stays in the buffer and is framed after it,
so protocol_decode of a packet sees what on_message of the one before did.
Reading goes on meanwhile (a client that leaves is noticed at once) until
the buffer holds more than maxPacketSize bytes; then it pauses.

Bounds: once every complete packet is handled, a buffer still holding more
than maxPacketSize bytes (a packet that never completes) closes the
connection, as does a packet left unfinished for packetTimeout seconds, and
readTimeout, writeTimeout and maxSendQueue (conn.py). Over maxConnections a
new connection is closed at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ..config import ServerSettings
from ..conn import (CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, Connection,
                    enforce_timeouts)
from ..hub import Hub
from ..lua.vm import RESYNC, LuaVM
from .limits import RateLimitedLog, watch_descriptors

log = logging.getLogger("connmix.socket")

# Seconds stop() lets connections flush and run on_close before aborting them.
SHUTDOWN_GRACE = 2.0


class SocketServer:
    def __init__(self, settings: ServerSettings, vm: LuaVM, hub: Hub,
                 next_client_id: Callable[[], str], reuse_port: bool = False) -> None:
        self.settings = settings
        self.vm = vm
        self.hub = hub
        self.next_client_id = next_client_id
        # -p workers all listen on the yaml's port (SO_REUSEPORT): the kernel spreads connections.
        self.reuse_port = reuse_port
        self.counters = hub.metrics.server(self)
        self.conns: set[Connection] = set()  # until on_close has run
        self.port = settings.port
        # One encoder object per server: the hub groups subscribers by it,
        # so a publish runs protocol_encode once for all of them.
        self.encoder = self._encode
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self.refusals = RateLimitedLog(log)

    def _encode(self, payload: bytes, binary: bool, conn: Connection | None) -> bytes:
        # A socket has no text/binary distinction: both go through protocol_encode.
        return self.vm.encode(conn, payload)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SocketSession(self), self.settings.bind,
                                                self.settings.port, backlog=1024,
                                                reuse_port=self.reuse_port)
        if self.settings.port == 0:  # tests ask for any free port
            self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(
            enforce_timeouts(self.conns, lambda conn, now: conn.session.check_timeouts(now)))

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
        if self._sweeper:
            self._sweeper.cancel()
        await self.stop_accepting()
        sessions = [conn.session for conn in self.conns]
        self.close_clients()
        finished = [session.finished for session in sessions]
        if finished:
            _, late = await asyncio.wait(finished, timeout=SHUTDOWN_GRACE)
            for session in sessions:
                if not session.finished.done():
                    session.transport.abort()
            if late:
                await asyncio.wait(late, timeout=SHUTDOWN_GRACE)
        if self._server:
            await self._server.wait_closed()


class SocketSession(asyncio.Protocol):
    """One TCP connection: its input buffer and the worker running its callbacks."""

    def __init__(self, server: SocketServer) -> None:
        self.server = server
        self.vm = server.vm
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.buffer = bytearray()  # unframed input
        self.held = 0  # how much of it the Lua side holds already (fed before)
        self.unseen = False  # bytes arrived that protocol_input has not seen yet
        self.generation = 0  # bumped by clear_buffer: a running feed's count is void
        self.worker: asyncio.Task | None = None  # set while a callback waits
        self.eof = False
        self.eof_at: float | None = None
        self.paused = False
        self.close_started: float | None = None
        self.unfinished_since: float | None = None  # buffered bytes, no packet framed since
        self.finished = self.loop.create_future()  # on_close has run

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        watch_descriptors(transport)
        server, settings = self.server, self.server.settings
        peer = transport.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if peer else ""
        if settings.max_connections and len(server.conns) >= settings.max_connections:
            server.refusals.warning("maxConnections", "port %d: refused a connection from %s: "
                                    "maxConnections %d reached", server.port, remote,
                                    settings.max_connections)
            transport.abort()  # nothing to flush; self.conn stays None
            return
        conn = Connection(server.next_client_id(), server, remote, settings.max_send_queue,
                          settings.write_timeout, settings.read_timeout,
                          encoder=server.encoder, session=self, script_frames=True, logger=log)
        self.conn = conn
        conn.log.debug("accepted on port %d", server.port)
        server.hub.add(conn)
        server.conns.add(conn)
        conn.open(transport, self._close)
        self._run(self.vm.call(conn, "on_connect", conn.id_bytes))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.close_code is not None:  # refused or closed by the server: input is void
            return
        self.buffer += data
        self.unseen = True
        traffic = self.server.counters.traffic
        traffic.messages_in += 1
        traffic.bytes_in += len(data)
        if self.worker is None:
            self._run(None)
        elif len(self.buffer) > self.server.settings.max_packet_size and not self.paused:
            self.transport.pause_reading()  # resumed when the worker catches up
            self.paused = True

    def eof_received(self) -> bool:
        if self.conn is None:
            return False
        self.eof = True
        self.eof_at = self.loop.time()
        if self.worker is None:
            self._end_of_input()
        return True  # keep writing: replies to what came before the EOF still go out

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:  # refused
            return
        # After an EOF from the client, a reset on our replies is still its clean close.
        err = None if exc is None or self.eof else f"connection lost: {exc}"
        self.conn.mark_closed(err)
        self.loop.create_task(self._finish())

    # -- the worker ----------------------------------------------------------------

    def _run(self, pending: Awaitable | None) -> None:
        """Handle what is buffered now; hand over to a worker task at the first wait."""
        self.conn.read_since = None  # a running callback never counts as idle
        while pending is None:
            if not self.unseen or self._stopped():
                self._idle()
                return
            pending = self._feed_once()
        self.worker = self.loop.create_task(self._work(pending))

    async def _work(self, pending: Awaitable) -> None:
        try:
            while pending is not None:
                await pending
                pending = None
                if self.unseen and not self._stopped():
                    pending = self._feed_once()
        finally:
            self.worker = None
        self._idle()

    def _feed_once(self) -> Awaitable | None:
        """One feed of what arrived since the last; an awaitable when on_message waits."""
        self.unseen = False
        generation = self.generation
        held, self.held = self.held, len(self.buffer)
        with memoryview(self.buffer) as view:
            new = bytes(view[held:])
        result = self.vm.feed(self.conn, new, held)
        if result is RESYNC:
            result = self.vm.feed(self.conn, bytes(self.buffer), 0)
        if result is None or type(result) is int:
            self._framed(result, generation)
            return None
        return self._framed_later(result, generation)

    async def _framed_later(self, pending: Awaitable, generation: int) -> None:
        self._framed(await pending, generation)

    def _framed(self, result: int | None, generation: int) -> None:
        if result is None:  # a Lua error: logged by the VM, the connection closing
            return
        if result < 0:
            self.conn.close(CLOSE_NORMAL, "disconnected by protocol_input (it returned -1)")
        elif generation == self.generation:  # else clear_buffer dropped it all already
            del self.buffer[:result]
            self.held -= result
            if result:
                self.unfinished_since = None

    def _stopped(self) -> bool:
        # Input the client sent before leaving is still handled; input
        # behind a close by the server is not.
        return self.conn.close_code is not None

    def _idle(self) -> None:
        """Every complete packet is handled: enforce the bound, notice an EOF."""
        conn = self.conn
        if self.paused:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        if conn.closing:
            return
        limit = self.server.settings.max_packet_size
        if len(self.buffer) > limit:
            reason = (f"packet too big: {len(self.buffer)} bytes buffered without a complete "
                      f"packet (maxPacketSize {limit})")
            conn.log.warning("closing: %s", reason)
            conn.close(CLOSE_TOO_BIG, reason)
        elif self.eof:
            self._end_of_input()
        else:
            conn.read_since = self.loop.time()
            if not self.buffer:
                self.unfinished_since = None
            elif self.unfinished_since is None:
                self.unfinished_since = conn.read_since

    def _end_of_input(self) -> None:
        """The client sent EOF and everything before it is handled: close."""
        if self.conn.closing:
            return
        err = None
        if self.buffer:
            err = f"connection closed by the client inside a packet ({len(self.buffer)} bytes unframed)"
        self.conn.close(CLOSE_NORMAL, err)

    # -- closing --------------------------------------------------------------------

    def clear_buffer(self) -> None:
        """conn:clear_buffer(): drop all buffered input."""
        self.buffer.clear()
        self.held = 0
        self.unseen = False
        self.generation += 1

    def _close(self, code: int) -> None:
        """conn.close(): flush what is queued, then close (bounded by _check_close)."""
        if self.close_started is None:
            self.close_started = self.loop.time()
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the sweeper."""
        self._check_unfinished(now)
        self._check_after_eof(now)
        self._check_close(now)

    def _check_after_eof(self, now: float) -> None:
        """After the client's EOF, replies to what it sent may still go out
        (a half-close), but a callback still waiting readTimeout later
        (wait_context_value without a timeout ...) waits for nobody: close,
        which ends its waits."""
        conn, timeout = self.conn, self.conn.read_timeout
        if (self.eof_at is not None and timeout and not conn.closing and self.worker is not None
                and now - self.eof_at > timeout):
            reason = (f"read timeout: the client ended its input {timeout:g}s ago "
                      "and a callback still waits")
            conn.log.warning("closing: %s", reason)
            conn.close(CLOSE_POLICY, reason)

    def _check_unfinished(self, now: float) -> None:
        """A packet that does not complete within packetTimeout closes the connection."""
        since, timeout, conn = self.unfinished_since, self.server.settings.packet_timeout, self.conn
        if since is None or conn.closing or now - since <= timeout:
            return
        reason = (f"packet timeout: {len(self.buffer)} bytes of a packet not completed "
                  f"within {timeout:g}s")
        conn.log.warning("closing: %s", reason)
        conn.close(CLOSE_POLICY, reason)

    def _check_close(self, now: float) -> None:
        """A close that cannot flush (the client does not read) is cut after writeTimeout."""
        timeout = self.conn.write_timeout
        if (self.close_started is not None and timeout and not self.finished.done()
                and now - self.close_started > timeout and self.transport.get_write_buffer_size()):
            self.conn.abort(f"slow client: the close could not flush within {timeout:g}s")

    async def _finish(self) -> None:
        """After the socket is gone: end waits, let the worker finish, run on_close."""
        conn, vm = self.conn, self.vm
        try:
            worker = self.worker
            if worker is not None and not worker.done():
                conn.end_waits()
                try:
                    await worker
                except Exception:
                    conn.log.exception("handling input failed")
            err = conn.close_err
            # Closed by the client: cleanly (EOF) unless the socket was lost (an error).
            conn.log_closed(conn.close_code if conn.close_code is not None else None if err else CLOSE_NORMAL)
            pending = vm.call(conn, "on_close", conn.id_bytes, err.encode() if err else None)
            if pending is not None:
                await pending
        finally:
            self.server.conns.discard(conn)
            vm.mesh.remove(conn)
            vm.forget(conn)
            if not self.finished.done():
                self.finished.set_result(None)
