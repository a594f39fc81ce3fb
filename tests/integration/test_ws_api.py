"""The WebSocket API /ws/v1 method by method, and its error codes, through
real API connections and real websocket clients; POST /v1/conn/call."""
from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from tests.api_helpers import SCRIPT, api_ws, call, client_id, error_code, send_op
from tests.helpers import assert_silent, receive_json
from tests.waiting import within


def nested(value, depth: int) -> list:
    """value inside depth levels of lists."""
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT)


async def subscribed(running, api, *channels: str):
    """A client subscribed to channels through conn.call; (ws, client id)."""
    ws = await running.connect()
    cid = await client_id(ws)
    if channels:
        reply = await call(api, "conn.call", {"c": cid, "f": "subscribe", "a": list(channels)})
        assert reply == {"E": None, "r": {"s": True}, "i": 1}
    return ws, cid


# -- mesh.publish / mesh.send ---------------------------------------------------------


async def test_publish_and_send(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api, "news")
    assert await call(api, "mesh.publish", {"c": "news", "d": "all"}, 1) == {"E": None, "r": {"s": 1, "f": 0}, "i": 1}
    assert (await ws.receive(timeout=5)).data == "all"
    assert await call(api, "mesh.send", {"c": cid, "d": "you"}, 2) == {"E": None, "r": {"s": True}, "i": 2}
    assert (await ws.receive(timeout=5)).data == "you"
    assert error_code(await call(api, "mesh.send", {"c": "123456", "d": "x"})) == 401
    assert error_code(await call(api, "mesh.publish", {"c": "news"})) == 101


@pytest.mark.parametrize("request_id", [1, 0, "abc", None, 3.5, [1, 2], {"k": "v"}, 2 ** 53])
async def test_request_ids_are_echoed(running, request_id):
    api = await api_ws(running)
    reply = await call(api, "mesh.publish", {"c": "nobody", "d": "x"}, request_id)
    assert reply == {"E": None, "r": {"s": 0, "f": 0}, "i": request_id}
    reply = await call(api, "no.such", {}, request_id)
    assert reply["i"] == request_id and error_code(reply) == 101


async def test_an_id_too_deeply_nested_to_echo_is_101_before_the_method_runs(running):
    """Issue 8 finding 11: the connection used to drop with a traceback."""
    api = await api_ws(running)
    ws, _ = await subscribed(running, api, "news")
    deep = "[" * 300 + "]" * 300
    await api.send_str(f'{{"m": "mesh.publish", "p": {{"c": "news", "d": "x"}}, "i": {deep}}}')
    reply = await receive_json(api)
    assert error_code(reply) == 101 and "nested" in reply["E"]["m"] and reply["i"] is None
    await assert_silent(ws)  # refused, not published
    assert await call(api, "mesh.publish", {"c": "news", "d": "y"}, 7) == {"E": None, "r": {"s": 1, "f": 0}, "i": 7}
    assert (await ws.receive(timeout=5)).data == "y"


async def test_text_ping_gets_pong_between_requests(running):
    api = await api_ws(running)
    await api.send_str("ping")
    assert (await api.receive(timeout=5)).data == "pong"
    assert (await call(api, "mesh.publish", {"c": "x", "d": "y"}))["E"] is None


# -- pipelining -------------------------------------------------------------------------------


async def test_a_thousand_pipelined_requests_are_all_answered_by_id(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api, "news")
    kinds = {}
    frames = []
    for i in range(1000):
        request_id = f"r{i}"
        if i % 3 == 0:
            frames.append({"m": "mesh.send", "p": {"c": cid, "d": f"s{i}"}, "i": request_id})
            kinds[request_id] = {"s": True}
        elif i % 3 == 1:
            frames.append({"m": "mesh.publish", "p": {"c": "news", "d": f"p{i}"}, "i": request_id})
            kinds[request_id] = {"s": 1, "f": 0}
        else:
            frames.append({"m": "mesh.send", "p": {"c": "404", "d": "x"}, "i": request_id})
            kinds[request_id] = 401
    # All written before any reply is read.
    await asyncio.gather(*(api.send_str(orjson.dumps(f).decode()) for f in frames))
    replies = {}
    async with within(30, "1000 replies"):
        while len(replies) < 1000:
            reply = await receive_json(api)
            assert reply["i"] not in replies, "one reply per request"
            replies[reply["i"]] = reply
    for request_id, expected in kinds.items():
        reply = replies[request_id]
        if expected == 401:
            assert error_code(reply) == 401
        else:
            assert reply["r"] == expected and reply["E"] is None
    received = [(await ws.receive(timeout=5)).data for _ in range(667)]
    assert received == [f["p"]["d"] for f in frames if f["p"]["c"] != "404"]


# -- conn.call ---------------------------------------------------------------------------------


async def test_conn_call_subscribe_and_unsubscribe(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api, "a", "b")
    assert (await call(api, "mesh.publish", {"c": "b", "d": "to b"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "to b"
    reply = await call(api, "conn.call", {"c": cid, "f": "unsubscribe", "a": ["b"]}, 9)
    assert reply == {"E": None, "r": {"s": True}, "i": 9}
    assert (await call(api, "mesh.publish", {"c": "b", "d": "gone"}))["r"] == {"s": 0, "f": 0}
    assert (await call(api, "mesh.publish", {"c": "a", "d": "still"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "still"


async def test_conn_call_set_context_is_what_the_script_sees(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api)
    context = {"uid": "1001", "n": 7, "ok": True, "tags": ["x", "y"], "o": {"k": "v"}}
    assert (await call(api, "conn.call", {"c": cid, "f": "set_context", "a": [context]}))["r"] == {"s": True}
    await send_op(ws, "context")
    assert await receive_json(ws) == {"context": context}
    assert (await call(api, "conn.call", {"c": cid, "f": "set_context_value", "a": ["n", 8]}))["r"] == {"s": True}
    assert (await call(api, "conn.call", {"c": cid, "f": "set_context_value", "a": ["ok", None]}))["r"] == {"s": True}
    await send_op(ws, "context")
    got = (await receive_json(ws))["context"]
    assert got == {"uid": "1001", "n": 8, "tags": ["x", "y"], "o": {"k": "v"}}


@pytest.mark.parametrize("function, args", [
    ("set_context_value", ["uid", "1001"]),
    ("set_context", [{"uid": "1001", "other": 1}]),
])
async def test_conn_call_wakes_a_waiting_wait_context_value(running, function, args):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api)
    await send_op(ws, "wait", key="uid")
    await assert_silent(ws, 0.1)  # the script waits
    assert (await call(api, "conn.call", {"c": cid, "f": function, "a": args}))["r"] == {"s": True}
    assert await receive_json(ws) == {"waited": "1001"}


@pytest.mark.parametrize("params, says", [
    (None, "params"),
    ("x", "params"),
    ({"f": "subscribe", "a": ["x"]}, "c must be"),
    ({"c": 5.0, "f": "subscribe", "a": ["x"]}, "c must be"),
    ({"c": True, "f": "subscribe", "a": ["x"]}, "c must be"),
    ({"c": -5, "f": "subscribe", "a": ["x"]}, "c must be"),
    ({"c": "CID", "a": ["x"]}, "f must be one of"),
    ({"c": "CID", "f": "close", "a": []}, "f must be one of"),
    ({"c": "CID", "f": ["subscribe"], "a": ["x"]}, "f must be one of"),
    ({"c": "CID", "f": "subscribe", "a": "x"}, "a must be an array"),
    ({"c": "CID", "f": "subscribe", "a": []}, "at least one channel"),
    ({"c": "CID", "f": "subscribe"}, "at least one channel"),
    ({"c": "CID", "f": "subscribe", "a": ["ok", "has space"]}, "a[1] must be a channel"),
    ({"c": "CID", "f": "subscribe", "a": [""]}, "a[0] must be a channel"),
    ({"c": "CID", "f": "unsubscribe", "a": [7]}, "a[0] must be a channel"),
    ({"c": "CID", "f": "set_context", "a": []}, "a must be [object]"),
    ({"c": "CID", "f": "set_context", "a": [[1, 2]]}, "a must be [object]"),
    ({"c": "CID", "f": "set_context", "a": [{}, {}]}, "a must be [object]"),
    ({"c": "CID", "f": "set_context_value", "a": ["k"]}, "a must be [key, value]"),
    ({"c": "CID", "f": "set_context_value", "a": [1, "v"]}, "a must be [key, value]"),
    ({"c": "CID", "f": "set_context_value", "a": ["", "v"]}, "a must be [key, value]"),
    ({"c": "CID", "f": "set_context_value", "a": ["k", nested(1, 65)]}, "nested deeper"),
])
async def test_conn_call_bad_params_are_101_and_change_nothing(running, params, says):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api, "keep")
    if isinstance(params, dict) and params.get("c") == "CID":
        params = {**params, "c": cid}
    reply = await call(api, "conn.call", params, "bad")
    assert error_code(reply) == 101 and says in reply["E"]["m"] and reply["i"] == "bad"
    await send_op(ws, "context")
    assert await receive_json(ws) == {"context": {}}
    assert (await call(api, "mesh.publish", {"c": "keep", "d": "ok"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "ok"


async def test_conn_call_on_an_unknown_or_closed_client_is_301(running):
    api = await api_ws(running)
    reply = await call(api, "conn.call", {"c": "77", "f": "subscribe", "a": ["x"]})
    assert error_code(reply) == 301 and "77" in reply["E"]["m"]
    ws, cid = await subscribed(running, api)
    await ws.close()
    for _ in range(100):  # the close completes a moment after the client sees it
        reply = await call(api, "conn.call", {"c": cid, "f": "set_context_value", "a": ["k", "v"]})
        if reply["E"]:
            break
        await asyncio.sleep(0.02)
    assert error_code(reply) == 301
    assert (await call(api, "mesh.publish", {"c": "x", "d": "y"}))["E"] is None


async def test_http_conn_call_has_the_same_params_and_codes(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api)
    reply = await running.api("/v1/conn/call", {"c": cid, "f": "subscribe", "a": ["h"]})
    assert reply == {"E": None, "r": {"s": True}}
    assert (await running.api("/v1/mesh/publish", {"c": "h", "d": "via http"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "via http"
    assert (await running.api("/v1/conn/call", {"c": cid, "f": "set_context_value", "a": ["k", "v"]}))["r"]
    await send_op(ws, "context")
    assert await receive_json(ws) == {"context": {"k": "v"}}
    assert error_code(await running.api("/v1/conn/call", {"c": "1", "f": "subscribe", "a": ["h"]})) == 301
    assert error_code(await running.api("/v1/conn/call", {"c": cid, "f": "nope"})) == 101
    assert error_code(await running.api("/v1/conn/call", "{oops")) == 101


# -- queue.pop / queue.unpop codes -------------------------------------------------------------


async def test_queue_pop_and_unpop_codes(start_engine):
    running = await start_engine(SCRIPT, luavm={"queue": {"topicSize": 10, "maxTopics": 3}})
    api = await api_ws(running)
    assert error_code(await call(api, "queue.unpop", {})) == 203
    assert await call(api, "queue.pop", {"t": ["a", "b"]}, "p1") == {"E": None, "r": {"s": True}, "i": "p1"}
    reply = await call(api, "queue.pop", {"t": ["c", "b"]}, "p2")
    assert error_code(reply) == 202 and "'b'" in reply["E"]["m"] and reply["i"] == "p2"
    assert (await call(api, "queue.pop", {"t": ["c"]}))["r"] == {"s": True}
    reply = await call(api, "queue.pop", {"t": ["d"]})
    assert error_code(reply) == 201 and "maxTopics" in reply["E"]["m"]
    assert await call(api, "queue.unpop", {}, "u") == {"E": None, "r": {"s": True}, "i": "u"}
    assert error_code(await call(api, "queue.unpop")) == 203
    assert (await call(api, "queue.pop", {"t": ["a", "d"]}))["r"] == {"s": True}
    assert (await call(api, "queue.unpop"))["r"] == {"s": True}


@pytest.mark.parametrize("params, says", [
    (None, "params"),
    ([], "t must be"),
    ({}, "t must be"),
    ({"t": "chat"}, "t must be"),
    ({"t": []}, "t must be"),
    ({"t": ["ok", 5]}, "t[1] must be"),
    ({"t": [""]}, "t[0] must be"),
    ({"t": ["a", "a"]}, "twice"),
])
async def test_queue_pop_bad_params_are_101(running, params, says):
    api = await api_ws(running)
    reply = await call(api, "queue.pop", params)
    assert error_code(reply) == 101 and says in reply["E"]["m"]
    assert error_code(await call(api, "queue.unpop", "x")) == 101
    assert error_code(await call(api, "queue.unpop", {})) == 203  # nothing was attached
    assert (await call(api, "queue.pop", {"t": ["fine"]}))["r"] == {"s": True}


async def test_queue_methods_are_websocket_only(running):
    async with running.session.post(running.api_url + "/v1/queue/pop", json={"t": ["a"]}) as resp:
        assert resp.status in (404, 405)


# -- invalid frames ------------------------------------------------------------------------------


BAD_FRAMES = [
    ("not json", "invalid JSON"),
    ("", "invalid JSON"),
    ("{", "invalid JSON"),
    ("null", "JSON object"),
    ("42", "JSON object"),
    ('"mesh.publish"', "JSON object"),
    ('{"m": "queue.push", "p": {}, "i": 1}', "unknown method"),
    ('{"m": "conn.close", "p": {}, "i": 1}', "unknown method"),
    ('{"m": null, "i": 1}', "unknown method"),
    ('{"m": 12, "i": 1}', "unknown method"),
    ('{"m": "mesh.send", "i": 1}', "params"),
    ('{"m": "conn.call", "i": 1}', "params"),
    ('{"m": "queue.pop", "i": 1}', "params"),
    ('{"m": "mesh.send", "p": {"c": "1", "d": 5}, "i": 1}', "d must be"),
    ('{"m": "mesh.publish", "p": {"c": ["x"], "d": "y"}, "i": 1}', "c must be"),
    ('{"m": "conn.call", "p": {"c": "1", "f": 3, "a": []}, "i": 1}', "f must be"),
    ('{"m": "queue.pop", "p": {"t": {"a": 1}}, "i": 1}', "t must be"),
]


async def test_invalid_frames_are_101_and_the_connection_stays_open(running):
    api = await api_ws(running)
    ws, cid = await subscribed(running, api, "news")
    for text, says in BAD_FRAMES:
        await api.send_str(text)
        reply = await receive_json(api)
        assert error_code(reply) == 101 and says in reply["E"]["m"], (text, reply)
        if '"i": 1' in text:
            assert reply["i"] == 1
    await api.send_bytes(bytes(random.Random(1).randrange(256) for _ in range(64)))
    assert error_code(await receive_json(api)) == 101
    assert not api.closed
    assert (await call(api, "mesh.publish", {"c": "news", "d": "after"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "after"
