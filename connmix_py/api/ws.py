"""The WebSocket API on apiServer (/ws/v1): pipelined requests, replies
carry the request's id."""
from __future__ import annotations

import logging
from typing import Any, Callable

import orjson
from aiohttp import WSMsgType, web

from . import requests
from .requests import ApiError, invalid

log = logging.getLogger("connmix.api")

METHODS: dict[str, Callable[[Any, Any], Any]] = {
    "mesh.publish": requests.publish,
    "mesh.send": requests.send,
}


def handle_request(mesh, text: str | bytes) -> bytes:
    """One request frame -> one reply frame."""
    request_id = None
    try:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"invalid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise invalid("request must be a JSON object {m, p, i}")
        request_id = request.get("i")
        name = request.get("m")
        method = METHODS.get(name) if isinstance(name, str) else None
        if method is None:
            raise invalid(f"unknown method {name!r}")
        return orjson.dumps({"E": None, "r": method(mesh, request.get("p")), "i": request_id})
    except ApiError as error:
        return orjson.dumps({"E": error.body(), "i": request_id})


def add_routes(app: web.Application, mesh) -> None:
    async def websocket_api(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "ping":
                    await ws.send_str("pong")
                    continue
                await ws.send_frame(handle_request(mesh, msg.data), WSMsgType.TEXT)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_frame(handle_request(mesh, msg.data), WSMsgType.TEXT)
        return ws

    app.router.add_get("/ws/v1", websocket_api)
