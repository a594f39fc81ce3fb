"""`protocol: websocket` servers on aiohttp, driving the entry script's callbacks.

A connection's life: the upgrade request is checked (path, then a valid
websocket handshake of version 13), ``on_handshake`` may refuse it (403; a
Lua error there is a 500), frames go to ``on_message`` one at a time, and
``on_close`` runs exactly once with nil after a clean close and the reason
otherwise. RFC 6455 violations close the connection (rfc6455.py): text that
is not UTF-8 with 1007, an unmasked frame or a bad close code with 1002.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from ..config import ServerSettings
from ..conn import (CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_INVALID_TEXT, CLOSE_NORMAL, LUA_ERROR_REASON,
                    CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, Connection, enforce_timeouts)
from ..frames import is_utf8
from ..hub import Hub
from ..lua.memory import LuaMemoryFull
from ..lua.vm import LuaVM
from ..metrics import HANDSHAKE_REFUSED
from ..textproto import first_values
from .http_limits import HttpLimits, limited_runner
from .rfc6455 import ServerWebSocketResponse, close_code_error, unsupported_version

log = logging.getLogger("connmix.websocket")

# Frames one connection may queue behind a waiting callback before reading pauses.
MAX_INBOX = 256
LOST = "connection lost"  # how every reason for a socket gone without a close begins
LOST_WITHOUT_CLOSE = f"{LOST}: closed by the client without a close frame"


def handshake_tables(request: web.Request, remote: str) -> tuple[dict, dict]:
    """on_handshake's ``headers`` (first value of each, like Go's Header.Get)
    and ``server`` arguments."""
    headers = first_values(request.headers.items())
    server = {
        "Method": request.method, "RequestUri": request.raw_path,
        "ServerProtocol": f"HTTP/{request.version.major}.{request.version.minor}",
        "Host": request.host, "RemoteAddr": remote,
    }
    return headers, server


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
        # Open connections, until their close has finished (the sweeper
        # enforces the write timeout on a close that cannot flush).
        self.conns: set[Connection] = set()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task | None = None
        self.port = settings.port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.settings.path, self._handle)
        settings = self.settings
        self._runner = limited_runner(app, HttpLimits(settings.handshake_timeout, settings.max_connections))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.bind, self.settings.port, backlog=1024,
                           reuse_port=self.reuse_port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        if self.settings.port == 0:  # tests ask for any free port
            self.port = site._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(enforce_timeouts(self.conns))

    async def stop_accepting(self) -> None:
        """Close the listening socket; open connections go on."""
        if self._runner:
            for site in list(self._runner.sites):
                await site.stop()

    def listening(self) -> bool:
        return self._runner is not None and bool(self._runner.sites)

    def close_clients(self) -> None:
        for conn in list(self.conns):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        self.close_clients()
        if self._runner:
            await self._runner.cleanup()

    # -- one connection ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=400, text="websocket upgrade expected\n")
        refused = unsupported_version(request)
        if refused is not None:
            return refused
        # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
        # Text frames stay bytes (Lua strings, checked for UTF-8 here) and no
        # compression is offered: fan-out writes the same uncompressed frame
        # bytes to every client. No autoclose: a client's close frame is
        # checked before it is answered.
        ws = ServerWebSocketResponse(max_msg_size=self.settings.max_message_size + 1, autoping=False,
                                     autoclose=False, compress=False, decode_text=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="invalid websocket handshake\n")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        remote = f"{peer[0]}:{peer[1]}" if peer else ""
        settings = self.settings
        conn = Connection(self.next_client_id(), self, remote, settings.max_send_queue,
                          settings.write_timeout, settings.read_timeout, logger=log)
        conn.log.debug("accepted on port %d, %s %s", self.port, request.method, request.path)
        self.hub.add(conn)
        try:
            refused = await self._handshake(request, conn)
            if refused is not None:
                conn.mark_closed(HANDSHAKE_REFUSED)  # for the metrics' close reason
                return refused
            try:
                await ws.prepare(request)
            except (ConnectionError, RuntimeError):  # the client left during on_handshake
                return ws
            await self._serve(request, ws, conn)
            return ws
        finally:
            self.vm.mesh.remove(conn)
            self.vm.forget(conn)

    async def _handshake(self, request: web.Request, conn: Connection) -> web.Response | None:
        """Run on_handshake; a response refusing the upgrade, or None to accept."""
        vm = self.vm
        headers, server = handshake_tables(request, conn.remote_addr)
        try:
            arguments = vm.to_lua(headers), vm.to_lua(server)
        except LuaMemoryFull as exc:  # data the script keeps fills its Lua state
            conn.log.error("%s: on_handshake not run, refused with 503: %s", vm.name, exc)
            return web.Response(status=503, text="server busy\n")
        accepted = await vm.call_for_result(conn, "on_handshake", conn.id_bytes, *arguments)
        if conn.close_code == CLOSE_INTERNAL_ERROR:  # the Lua error is logged by the VM
            conn.log.debug("handshake refused: 500, on_handshake failed")
            return web.Response(status=500, text="on_handshake failed\n")
        if accepted is False or conn.closing:
            conn.log.debug("handshake refused: 403 by on_handshake")
            return web.Response(status=403, text="forbidden\n")
        conn.log.debug("handshake accepted")
        return None

    async def _serve(self, request: web.Request, ws: web.WebSocketResponse, conn: Connection) -> None:
        vm, traffic = self.vm, self.counters.traffic
        loop = asyncio.get_running_loop()
        closing = _CloseRequest(ws, loop)
        conn.open(request.transport, closing.request)
        self.conns.add(conn)
        err: str | None = None
        # While a callback waits, reading goes on: frames queue in the inbox
        # (per-connection order kept by one worker) and a lost client is
        # noticed at once, ending the callback's waits.
        inbox: deque = deque()
        worker: asyncio.Task | None = None
        try:
            while not conn.closing:
                closing.receiving = True
                # A client whose callback is still running is not idle.
                conn.read_since = loop.time() if worker is None or worker.done() else None
                msg = await ws.receive()
                conn.read_since = None
                closing.receiving = False
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    binary = kind is WSMsgType.BINARY
                    traffic.messages_in += 1
                    traffic.bytes_in += len(msg.data)
                    if not binary and not is_utf8(msg.data):  # a fragmented message comes whole
                        self._fail(conn, CLOSE_INVALID_TEXT, "invalid UTF-8 in a text message")
                        break
                    if worker is None or worker.done():
                        pending = vm.call_message(conn, binary, msg.data)
                        if pending is not None:
                            worker = loop.create_task(self._run_in_order(conn, pending, inbox))
                    else:
                        inbox.append((binary, msg.data))
                        if len(inbox) >= MAX_INBOX:  # a flood: stop reading until it drains
                            await asyncio.shield(worker)
                elif kind is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    continue
                elif kind is WSMsgType.ERROR:
                    err = self._receive_error(conn, msg.data)
                    break
                elif kind is WSMsgType.CLOSED and not conn.closing:
                    err = LOST_WITHOUT_CLOSE
                    break
                elif kind is WSMsgType.CLOSE:  # from the client: clean unless its code is invalid
                    invalid = close_code_error(msg.data)
                    if invalid is not None:
                        self._fail(conn, CLOSE_PROTOCOL_ERROR, f"protocol error (1002): {invalid}")
                    break
                else:  # CLOSING asked for by us
                    break
        except asyncio.CancelledError:
            err = "server shutting down"
            raise
        except ConnectionError as exc:
            err = f"{LOST}: {exc}"
        finally:
            conn.mark_closed(err)
            await asyncio.shield(self._close_and_notify(conn, ws, closing, worker))

    async def _run_in_order(self, conn: Connection, pending, inbox: deque) -> None:
        """Finish the waiting callback, then the frames that queued behind it.
        Frames still queued when the server closed the connection are dropped;
        those a client sent before leaving are still handled."""
        await pending
        while inbox and (not conn.closing or conn.close_code is None):
            binary, data = inbox.popleft()
            pending = self.vm.call_message(conn, binary, data)
            if pending is not None:
                await pending
        inbox.clear()
        conn.read_since = asyncio.get_running_loop().time()  # idle from now on

    async def _close_and_notify(self, conn: Connection, ws: web.WebSocketResponse,
                                closing: "_CloseRequest", worker: asyncio.Task | None) -> None:
        try:
            await closing.finish()
        except Exception:  # the peer is gone; nothing left to flush
            pass
        finally:
            self.conns.discard(conn)
        # The code the server sent, else the client's; none when the socket was lost.
        lost = (conn.close_err or "").startswith(LOST)
        conn.log_closed(None if lost else conn.close_code if conn.close_code is not None else ws.close_code)
        if worker is not None and not worker.done():
            conn.end_waits()
            await worker
        pending = self.vm.call(conn, "on_close", conn.id_bytes,
                               conn.close_err.encode() if conn.close_err else None)
        if pending is not None:
            await pending

    def _fail(self, conn: Connection, code: int, text: str) -> None:
        """Close for a protocol violation; ``text`` is logged and goes to on_close."""
        conn.log.warning("closing: %s", text)
        conn.close(code, text)

    def _receive_error(self, conn: Connection, exc: BaseException) -> str:
        """The reason for on_close when receiving failed; protocol errors are logged."""
        if not isinstance(exc, WebSocketError):
            return f"{LOST}: {exc or type(exc).__name__}"
        if exc.code == CLOSE_TOO_BIG:
            text = f"message too big (limit {self.settings.max_message_size} bytes)"
        else:
            text = f"protocol error ({exc.code}): {exc}"
        conn.log.warning("closing: %s", text)
        return text


class _CloseRequest:
    """How a close asked for by the script, the API or a timeout reaches the
    socket: while the handler waits in receive() a close task wakes it;
    otherwise the handler sees conn.closing and closes with ``code``."""

    __slots__ = ("ws", "loop", "code", "receiving", "task")

    def __init__(self, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.code = CLOSE_NORMAL
        self.receiving = False
        self.task: asyncio.Task | None = None

    def request(self, code: int) -> None:
        self.code = code
        if self.receiving and self.task is None:
            self.task = self.loop.create_task(self._close())

    def _close(self) -> Awaitable[bool]:
        # Only a Lua error's close says why; the others keep CONNMIX's empty reason.
        reason = LUA_ERROR_REASON.encode() if self.code == CLOSE_INTERNAL_ERROR else b""
        return self.ws.close(code=self.code, message=reason)

    async def finish(self) -> None:
        """Complete the close handshake, whoever started it."""
        if self.task is not None:
            await self.task
        elif not self.ws.closed:
            await self._close()
