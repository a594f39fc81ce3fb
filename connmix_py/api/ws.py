"""The WebSocket API on apiServer (/ws/v1): pipelined requests, replies
carry the request's id and leave in request order.

A request that waits (a publish on a grid node waits for the other nodes'
counts) does not hold up reading the next ones: up to MAX_WAITING requests of
one session wait together, so a pipelining backend gets the grid's round
trips overlapped instead of one after another.

Most methods are stateless (``METHODS``); ``queue.pop`` and ``queue.unpop``
belong to the connection they arrive on (``queue_consumer.METHODS``).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..config import AccessSettings, AccessUser
from ..eager import at_once_or_handle
from ..queue import Queues
from ..servers.rfc6455 import ServerWebSocketResponse, unsupported_version
from . import access, queue_consumer, requests
from .conn_call import conn_call
from .queue_consumer import ApiConsumer
from .requests import ApiError, invalid

log = logging.getLogger("connmix.api")

# Seconds a shutdown lets each API connection finish its close handshake; a
# client that stopped reading never lets the close frame out, so it is cut.
CLOSE_GRACE = 2.0
# Requests of one session that may wait at once; beyond it the session stops
# reading until the oldest is answered (back-pressure on the backend).
MAX_WAITING = 256

METHODS: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
    "mesh.publish": requests.publish,
    "mesh.send": requests.send,
    "conn.call": conn_call,
}


def _echoable(request_id: Any) -> Any:
    """The request id, if the reply can carry it back (101 before the
    method runs, not after): orjson writes at most 254 levels of nesting."""
    if isinstance(request_id, (list, dict)):
        try:
            orjson.dumps(request_id)
        except orjson.JSONEncodeError:
            raise invalid("i is nested too deeply to be echoed") from None
    return request_id


async def handle_request(mesh, text: str | bytes, consumer: ApiConsumer | None = None) -> bytes:
    """One request frame -> one reply frame."""
    request_id = None
    try:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"invalid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise invalid("request must be a JSON object {m, p, i}")
        request_id = _echoable(request.get("i"))
        name = request.get("m")
        method = METHODS.get(name) if isinstance(name, str) else None
        if method is None:
            bound = queue_consumer.METHODS.get(name) if isinstance(name, str) and consumer is not None else None
            if bound is None or consumer is None:
                raise invalid(f"unknown method {name!r}")
            return orjson.dumps({"E": None, "r": bound(consumer, request.get("p")), "i": request_id})
        return orjson.dumps({"E": None, "r": await method(mesh, request.get("p")), "i": request_id})
    except ApiError as error:
        return orjson.dumps({"E": error.body(), "i": request_id})


class InOrderReplies:
    """A session's replies, sent in request order. A reply ready at once
    with nothing waiting before it is sent straight away (no task); a request
    that waits becomes a task, and later replies queue behind it."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws, self.transport = ws, transport
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.room = asyncio.Event()
        self.writer: asyncio.Task | None = None

    async def add(self, outcome: bytes | Callable[[], Awaitable[bytes]]) -> None:
        """outcome: at_once_or_handle's result for handle_request (or a ready reply)."""
        if not self.waiting and isinstance(outcome, bytes):
            await self.ws.send_frame(outcome, WSMsgType.TEXT)
            return
        if isinstance(outcome, bytes):
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            reply.set_result(outcome)
        else:
            reply = asyncio.ensure_future(outcome())
        self.waiting.append(reply)
        if self.writer is None:
            self.writer = asyncio.create_task(self._write())
        while len(self.waiting) >= MAX_WAITING and self.writer is not None:
            self.room.clear()
            await self.room.wait()

    async def _write(self) -> None:
        try:
            while self.waiting:
                reply = await self.waiting[0]
                self.waiting.popleft()
                self.room.set()
                await self.ws.send_frame(reply, WSMsgType.TEXT)
        except Exception:  # the socket failed, or a bug in a method: end the session
            log.exception("/ws/v1: a reply could not be sent; closing the session")
            await _close_within_grace(self.ws, self.transport, WSCloseCode.INTERNAL_ERROR, b"internal error")
        finally:
            self.writer = None
            self.room.set()

    def cancel(self) -> None:
        """The session ended: nobody reads the replies any more. What the
        requests already did stands (a publish was delivered when it ran)."""
        for reply in self.waiting:
            reply.cancel()
        if self.writer is not None:
            self.writer.cancel()


@dataclass(frozen=True)
class Session:
    """An open /ws/v1 connection: its transport (to abort one whose close
    cannot flush), and who opened it from where (to end it on revocation)."""
    transport: asyncio.Transport
    user: AccessUser | None
    remote: str | None


class ApiSessions:
    """The open /ws/v1 connections. Every one may consume: each has its
    (idle) consumer."""

    def __init__(self) -> None:
        self.open: dict[ApiConsumer, Session] = {}
        # The access of the latest reload: a session admitted before it but
        # registered after it (its upgrade was under way) is checked against it.
        self.access: AccessSettings | None = None

    def admitted(self, session: Session) -> bool:
        return self.access is None or access.still_admits(self.access, session.user, session.remote)

    async def end(self, consumers: list[ApiConsumer], code: int, reason: bytes) -> None:
        for consumer in consumers:
            consumer.close()
        await asyncio.gather(*(_close_within_grace(c.ws, self.open[c].transport, code, reason)
                               for c in consumers if c in self.open), return_exceptions=True)

    async def end_revoked(self, settings: AccessSettings) -> int:
        """End (1008) the sessions ``settings`` would no longer let in."""
        self.access = settings
        revoked = [consumer for consumer, session in self.open.items() if not self.admitted(session)]
        for consumer in revoked:
            user = self.open[consumer].user
            log.warning("api: /ws/v1 session of %s from %s ended: access revoked",
                        repr(user.username) if user else "an anonymous client", self.open[consumer].remote)
        await self.end(revoked, WSCloseCode.POLICY_VIOLATION, b"access revoked")
        return len(revoked)


async def _close_within_grace(ws: web.WebSocketResponse, transport: asyncio.Transport,
                              code: int, reason: bytes) -> None:
    """Close with code; abort the connection if the close cannot flush in time."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason), CLOSE_GRACE)
    except asyncio.TimeoutError:
        transport.abort()


def add_routes(app: web.Application, mesh, queues: Queues | None = None, node_id: int = 1) -> ApiSessions:
    queues = queues if queues is not None else Queues(2000, 100)
    sessions = ApiSessions()

    async def websocket_api(request: web.Request) -> web.StreamResponse:
        refused = unsupported_version(request)
        if refused is not None:
            return refused
        # RFC 6455 as on the servers: unmasked frames close with 1002.
        ws = ServerWebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        if request.transport is None:  # the client left during the upgrade
            return ws
        consumer = ApiConsumer(ws, request.transport, queues, node_id)
        session = Session(request.transport, request.get(access.USER), request.remote)
        sessions.open[consumer] = session
        if not sessions.admitted(session):  # revoked while the upgrade was under way
            await sessions.end([consumer], WSCloseCode.POLICY_VIOLATION, b"access revoked")
        replies = InOrderReplies(ws, request.transport)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and msg.data == "ping":
                    await replies.add(b"pong")
                elif msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    await replies.add(at_once_or_handle(handle_request(mesh, msg.data, consumer)))
        finally:
            replies.cancel()
            sessions.open.pop(consumer, None)
            consumer.close()
        return ws

    async def close_all(app: web.Application) -> None:
        # Without this, shutting the API down waits for every open API
        # connection to end by itself (aiohttp's 60 s shutdown timeout).
        await sessions.end(list(sessions.open), WSCloseCode.GOING_AWAY, b"server shutting down")

    app.on_shutdown.append(close_all)
    app.router.add_get("/ws/v1", websocket_api)
    return sessions
