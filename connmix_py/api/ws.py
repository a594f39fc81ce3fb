"""The WebSocket API on apiServer (/ws/v1): pipelined requests, replies
carry the request's id.

Most methods are stateless (``METHODS``); ``queue.pop`` and ``queue.unpop``
belong to the connection they arrive on (``queue_consumer.METHODS``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..queue import Queues
from ..servers.rfc6455 import ServerWebSocketResponse, unsupported_version
from . import queue_consumer, requests
from .conn_call import conn_call
from .queue_consumer import ApiConsumer
from .requests import ApiError, invalid

log = logging.getLogger("connmix.api")

# Seconds a shutdown lets each API connection finish its close handshake; a
# client that stopped reading never lets the close frame out, so it is cut.
CLOSE_GRACE = 2.0

METHODS: dict[str, Callable[[Any, Any], Any]] = {
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


def handle_request(mesh, text: str | bytes, consumer: ApiConsumer | None = None) -> bytes:
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
        return orjson.dumps({"E": None, "r": method(mesh, request.get("p")), "i": request_id})
    except ApiError as error:
        return orjson.dumps({"E": error.body(), "i": request_id})


async def _close_within_grace(ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
    """Close with 1001; abort the connection if the close cannot flush in time."""
    try:
        await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                               CLOSE_GRACE)
    except asyncio.TimeoutError:
        transport.abort()


def add_routes(app: web.Application, mesh, queues: Queues | None = None, node_id: int = 1) -> None:
    queues = queues if queues is not None else Queues(2000, 100)
    # Every API connection may consume: each has its (idle) consumer. The
    # transport is kept to abort a connection whose close cannot flush.
    connections: dict[ApiConsumer, asyncio.Transport] = {}

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
        connections[consumer] = request.transport
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if msg.data == "ping":
                        await ws.send_str("pong")
                        continue
                    await ws.send_frame(handle_request(mesh, msg.data, consumer), WSMsgType.TEXT)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_frame(handle_request(mesh, msg.data, consumer), WSMsgType.TEXT)
        finally:
            connections.pop(consumer, None)
            consumer.close()
        return ws

    async def close_all(app: web.Application) -> None:
        # Without this, shutting the API down waits for every open API
        # connection to end by itself (aiohttp's 60 s shutdown timeout).
        open_now = list(connections.items())
        for consumer, _ in open_now:
            consumer.close()
        await asyncio.gather(*(_close_within_grace(c.ws, transport) for c, transport in open_now),
                             return_exceptions=True)

    app.on_shutdown.append(close_all)
    app.router.add_get("/ws/v1", websocket_api)
