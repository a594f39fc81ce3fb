"""mix.queue.push bounds, and mix.redis against a real Redis-protocol server."""
from __future__ import annotations

import asyncio

from tests.helpers import receive_json
from tests.ports import reserved_port

QUEUE = """
function on_message(msg)
    local conn = mix.websocket()
    local req = mix.json_decode(msg.data)
    local n, err = mix.queue.push(req.topic, req.data)
    conn:send(mix.json_encode({n = n or false, err = err or false}))
end
"""


async def push(ws, topic, data):
    await ws.send_json({"topic": topic, "data": data})
    return await receive_json(ws)


async def test_queue_push_is_bounded_and_says_so(start_engine):
    running = await start_engine(QUEUE, luavm={"queue": {"topicSize": 2, "maxTopics": 2}})
    ws = await running.connect()
    assert await push(ws, "a", "one") == {"n": 1, "err": False}
    assert await push(ws, "a", {"k": [1, 2]}) == {"n": 2, "err": False}
    full = await push(ws, "a", "three")
    assert full["n"] is False and "topicSize" in full["err"]
    assert (await push(ws, "b", "x"))["n"] == 1
    too_many = await push(ws, "c", "x")
    assert too_many["n"] is False and "maxTopics" in too_many["err"]
    bad = await push(ws, "", "x")
    assert bad["n"] is False and "bad argument #1" in bad["err"]
    queues = running.engine.queues
    assert [queues.pop("a"), queues.pop("a")] == ["one", {"k": [1, 2]}]


REDIS = """
function on_message(msg)
    local conn = mix.websocket()
    local req = mix.json_decode(msg.data)
    local r, err = mix.redis.connection(req.name or "default")
    if err then conn:send(mix.json_encode({err = err})) return end
    local v, err = r:command(unpack(req.args))
    conn:send(mix.json_encode({v = v == nil and "<nil>" or v, err = err or false, t = type(v)}))
end
"""


async def command(ws, *args, name=None):
    body = {"args": list(args)}
    if name:
        body["name"] = name
    await ws.send_json(body)
    return await receive_json(ws)


async def test_redis_commands_map_replies_to_lua_values(start_engine, redis_server):
    running = await start_engine(REDIS, luavm={"redis": [{"name": "default", "addr": redis_server.addr}]})
    ws = await running.connect()
    assert await command(ws, "SET", "greeting", "héllo") == {"v": "OK", "err": False, "t": "string"}
    assert await command(ws, "GET", "greeting") == {"v": "héllo", "err": False, "t": "string"}
    assert await command(ws, "GET", "missing") == {"v": "<nil>", "err": False, "t": "nil"}
    assert await command(ws, "INCRBY", "n", 5) == {"v": 5, "err": False, "t": "number"}
    await command(ws, "RPUSH", "list", "a", "b")
    assert await command(ws, "LRANGE", "list", 0, -1) == {"v": ["a", "b"], "err": False, "t": "table"}
    wrong = await command(ws, "INCR", "greeting")
    assert wrong["v"] == "<nil>" and "not an integer" in wrong["err"]
    unknown = await command(ws, "NOSUCHCOMMAND")
    assert unknown["v"] == "<nil>" and "unknown command" in unknown["err"].lower()


async def test_redis_unknown_name_and_unreachable_server_are_errors(start_engine, redis_server):
    with reserved_port() as nobody_listens:
        running = await start_engine(REDIS, luavm={"redis": [
            {"name": "default", "addr": redis_server.addr},
            {"name": "down", "addr": f"127.0.0.1:{nobody_listens}"}]})
        ws = await running.connect()
        assert "not configured" in (await command(ws, "PING", name="nope"))["err"]
        down = await command(ws, "PING", name="down")
    assert down["v"] == "<nil>" and down["err"].startswith("redis:")
    assert (await command(ws, "PING"))["v"] == "PONG"


SLOW_REDIS = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "block" then
        local r = mix.redis.connection("default")
        local v, err = r:command("BLPOP", "never", "0.5")
        conn:send("unblocked")
    else
        conn:send("quick")
    end
end
"""


async def test_waiting_redis_command_does_not_block_other_connections(start_engine, redis_server):
    running = await start_engine(SLOW_REDIS, luavm={"redis": [{"name": "default", "addr": redis_server.addr}]})
    slow, quick = await running.connect(), await running.connect()
    await slow.send_str("block")
    await asyncio.sleep(0.05)
    await quick.send_str("hi")
    assert (await quick.receive(timeout=5)).data == "quick"
    assert (await slow.receive(timeout=5)).data == "unblocked"
