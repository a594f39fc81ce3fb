"""Talking to the API server the way backends do, for the API and queue tests."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.helpers import receive_json

# A script that lets a test drive a connection: its id, pushes to the queue,
# its context, and waiting for a context value.
SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    local req = mix.json_decode(msg.data)
    if req.op == "id" then
        conn:send(conn:client_id())
    elseif req.op == "push" then
        local n, err = mix.queue.push(req.topic, req.data)
        conn:send(mix.json_encode({n = n or false, err = err or false}))
    elseif req.op == "burst" then
        -- n pushes in one callback: {i = 1..n, pad = <size bytes>}
        local pad, pushed, err = string.rep("x", req.size or 0), 0, false
        for i = req.from or 1, (req.from or 1) + req.n - 1 do
            local n, e = mix.queue.push(req.topic, {i = i, pad = pad})
            if not n then err = e break end
            pushed = pushed + 1
        end
        conn:send(mix.json_encode({pushed = pushed, err = err}))
    elseif req.op == "context" then
        conn:send(mix.json_encode({context = conn:context()}))
    elseif req.op == "wait" then
        local v = conn:wait_context_value(req.key, req.timeout)
        conn:send(mix.json_encode({waited = v or false}))
    end
end
"""


async def api_ws(running, **kwargs) -> aiohttp.ClientWebSocketResponse:
    return await running.session.ws_connect(running.api_url + "/ws/v1", **kwargs)


async def call(ws, method: str, params: Any = None, i: Any = 1) -> dict:
    """One request, its reply (nothing else may arrive in between)."""
    request = {"m": method, "i": i}
    if params is not None:
        request["p"] = params
    await ws.send_str(orjson.dumps(request).decode())
    return await receive_json(ws)


async def send_op(ws, op: str, **fields) -> None:
    await ws.send_str(orjson.dumps({"op": op, **fields}).decode())


async def client_id(ws) -> str:
    await send_op(ws, "id")
    return (await ws.receive(timeout=5)).data


async def push(ws, topic: str, data: Any) -> dict:
    """mix.queue.push from this client's script: {"n": .., "err": ..}."""
    await send_op(ws, "push", topic=topic, data=data)
    return await receive_json(ws)


async def burst(ws, topic: str, n: int, size: int = 0, start: int = 1) -> dict:
    """n pushes of {i, pad} in one callback: {"pushed": .., "err": ..}."""
    await send_op(ws, "burst", topic=topic, n=n, size=size, **{"from": start})
    return await receive_json(ws, timeout=30)


def error_code(reply: dict) -> int:
    assert reply.get("E"), reply
    assert reply.get("r") is None, reply
    return reply["E"]["c"]
