"""A waiting call never holds the event loop (issue 14): while one
connection waits in wait_context_value or a blocking Redis command, other
connections are served, and the wait then ends the way it should. Proved
by the order of events; the waits' own timeouts are hang guards only."""
from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from tests.held_backend import GUARD, eventually

SCRIPT = """
function on_message(msg)
    local c, data = mix.websocket(), msg.data
    local key = data:match("^wait:(.+)$")
    local list = data:match("^blpop:(.+)$")
    if key then
        c:send("waiting:" .. c:client_id())
        local v = c:wait_context_value(key, %(guard)d)
        c:send("waited:" .. (v or "nil"))
    elseif list then
        local reply, err = mix.redis.connection("default"):command("BLPOP", list, "%(guard)d")
        c:send("popped:" .. (reply and reply[2] or tostring(err)))
    else
        c:send(data)
    end
end
""" % {"guard": GUARD // 2}


async def text(ws) -> str:
    msg = await ws.receive(timeout=GUARD)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    return msg.data


async def served(running) -> None:
    other = await running.connect()
    await other.send_str("served")
    assert await text(other) == "served"
    await other.close()


async def test_wait_context_value_leaves_the_loop_free_until_the_value_is_set(start_engine):
    running = await start_engine(SCRIPT)
    waiting = await running.connect()
    await waiting.send_str("wait:ready")
    cid = (await text(waiting)).split(":", 1)[1]
    await served(running)  # while the wait is on
    reply = await running.api("/v1/conn/call", {"c": cid, "f": "set_context_value", "a": ["ready", "yes"]})
    assert reply == {"E": None, "r": {"s": True}}
    assert await text(waiting) == "waited:yes"  # woken by the value, not ended by its timeout


async def test_a_blocking_redis_command_leaves_the_loop_free(start_engine, redis_server):
    running = await start_engine(SCRIPT, luavm={"redis": [{"name": "default", "addr": redis_server.addr}]})
    test_redis = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        await test_redis.delete("guarantees:list")
        waiting = await running.connect()
        await waiting.send_str("blpop:guarantees:list")

        async def blpop_waits_on_the_server() -> bool:
            return (await test_redis.info("clients"))["blocked_clients"] > 0
        await eventually(blpop_waits_on_the_server, "the BLPOP waiting on the Redis server")
        await served(running)  # while the BLPOP waits on the server side
        await test_redis.rpush("guarantees:list", "item")
        assert await text(waiting) == "popped:item"  # the push ended it, not its timeout
    finally:
        await test_redis.aclose()
