"""`protocol: websocket` servers on aiohttp, driving the entry script's callbacks."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiohttp import WSMsgType, web

from ..config import ServerSettings
from ..conn import CLOSE_GOING_AWAY, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, Connection
from ..hub import Hub
from ..lua.vm import LuaVM

log = logging.getLogger("connmix.websocket")

SWEEP_INTERVAL = 1.0


class WebSocketServer:
    def __init__(self, settings: ServerSettings, vm: LuaVM, hub: Hub,
                 next_client_id: Callable[[], str]) -> None:
        self.settings = settings
        self.vm = vm
        self.hub = hub
        self.next_client_id = next_client_id
        self.conns: set[Connection] = set()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task | None = None
        self._sockets: dict[Connection, web.WebSocketResponse] = {}
        self.port = settings.port

    async def start(self) -> None:
        app = web.Application(client_max_size=self.settings.max_message_size)
        app.router.add_get(self.settings.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.bind, self.settings.port, backlog=1024)
        await site.start()
        if self.settings.port == 0:  # tests ask for any free port
            self.port = site._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for conn in list(self.conns):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._runner:
            await self._runner.cleanup()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for conn in list(self.conns):
                conn.check_timeouts(now)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=400, text="websocket upgrade expected\n")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        remote = f"{peer[0]}:{peer[1]}" if peer else ""
        settings = self.settings
        conn = Connection(self.next_client_id(), self, remote, settings.max_send_queue,
                          settings.write_timeout, settings.read_timeout)
        self.hub.add(conn)
        try:
            return await self._serve(request, conn)
        finally:
            self.hub.remove(conn)
            self.vm.forget(conn)

    async def _serve(self, request: web.Request, conn: Connection) -> web.StreamResponse:
        vm = self.vm
        headers = vm.to_lua({k: v for k, v in request.headers.items()})
        server_info = vm.to_lua({
            "Method": request.method, "RequestUri": request.path_qs,
            "ServerProtocol": f"HTTP/{request.version.major}.{request.version.minor}",
            "Host": request.host, "RemoteAddr": conn.remote_addr,
        })
        accepted = await vm.call_for_result(conn, "on_handshake", conn.id_bytes, headers, server_info)
        if accepted is False or conn.closing:
            return web.Response(status=403, text="forbidden\n")

        ws = web.WebSocketResponse(max_msg_size=self.settings.max_message_size, autoping=True)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        closing = _CloseRequest(ws, loop)
        conn.open(request.transport, closing.request)
        self.conns.add(conn)
        err: str | None = None
        try:
            while not conn.closing:
                closing.receiving = True
                msg = await ws.receive()
                closing.receiving = False
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    conn.last_read = loop.time()
                    binary = kind is WSMsgType.BINARY
                    pending = vm.call_message(conn, binary, msg.data if binary else msg.data.encode())
                    if pending is not None:
                        await pending
                elif kind is WSMsgType.ERROR:
                    err = self._frame_error(conn, msg.data)
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        except asyncio.CancelledError:
            err = "server shutting down"
            raise
        except ConnectionError as exc:
            err = f"connection lost: {exc}"
        finally:
            self.conns.discard(conn)
            conn.mark_closed(err)
            await asyncio.shield(self._close_and_notify(conn, ws, closing.code))
        return ws

    async def _close_and_notify(self, conn: Connection, ws: web.WebSocketResponse, code: int) -> None:
        if not ws.closed:
            try:
                await ws.close(code=code)
            except Exception:  # the peer is gone; nothing left to flush
                pass
        pending = self.vm.call(conn, "on_close", conn.id_bytes,
                               conn.close_err.encode() if conn.close_err else None)
        if pending is not None:
            await pending

    def _frame_error(self, conn: Connection, exc: BaseException) -> str:
        code = getattr(exc, "code", None)
        if code == CLOSE_TOO_BIG:
            text = f"message too big (limit {self.settings.max_message_size} bytes)"
        elif code == CLOSE_UNSUPPORTED:
            text = f"unsupported frame: {exc}"
        else:
            text = f"protocol error: {exc}"
        log.warning("client %s (%s): %s", conn.client_id, conn.remote_addr, text)
        return text


class _CloseRequest:
    """How a close asked for by the script, the API or a timeout reaches the
    socket: while the handler waits in receive() a close task wakes it;
    otherwise the handler sees conn.closing and closes with ``code``."""

    __slots__ = ("ws", "loop", "code", "receiving")

    def __init__(self, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.code = 1000
        self.receiving = False

    def request(self, code: int) -> None:
        self.code = code
        if self.receiving:
            self.loop.create_task(self.ws.close(code=code))
