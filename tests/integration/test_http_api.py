"""The API server: HTTP /v1/... and the WebSocket API /ws/v1, with bad
requests answered by code 101 and the server (and the API connection)
still serving afterwards."""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import orjson
import pytest

from tests.helpers import assert_silent, receive_json

SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "id" then
        conn:send(conn:client_id())
    else
        conn:subscribe(msg.data)
        conn:send("subscribed " .. msg.data)
    end
end
"""


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT)


async def subscriber(running, *channels: str) -> aiohttp.ClientWebSocketResponse:
    ws = await running.connect()
    for channel in channels:
        await ws.send_str(channel)
        assert (await ws.receive(timeout=5)).data == f"subscribed {channel}"
    return ws


async def client_id(ws) -> str:
    await ws.send_str("id")
    return (await ws.receive(timeout=5)).data


async def get_json(running, path: str) -> tuple[int, dict]:
    async with running.session.get(running.api_url + path) as resp:
        return resp.status, await resp.json()


def invalid(reply: dict) -> str:
    """The message of a code 101 error reply."""
    assert reply["E"]["c"] == 101, reply
    assert "r" not in reply or reply["r"] is None
    return reply["E"]["m"]


# -- HTTP /v1/mesh/publish -----------------------------------------------------------


@pytest.mark.parametrize("body, says", [
    ("{not json", "invalid JSON"),
    ("", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    ("[1, 2]", "object"),
    ('{"d": "x"}', "c must be"),
    ('{"c": "", "d": "x"}', "c must be"),
    ('{"c": 5, "d": "x"}', "c must be"),
    ('{"c": "news"}', "d must be a string"),
    ('{"c": "news", "d": {"a": 1}}', "d must be a string"),
    ('{"c": "news", "d": 12}', "d must be a string"),
    ('{"c": "news", "d": "***", "t": "binary"}', "base64"),
    ('{"c": "news", "d": "x", "t": "video"}', "t must be"),
    ('{"c": "news", "d": "x", "t": 1}', "t must be"),
])
async def test_bad_publish_is_101_and_delivers_nothing(running, body, says):
    ws = await subscriber(running, "news")
    assert says in invalid(await running.api("/v1/mesh/publish", body))
    await assert_silent(ws, 0.1)
    assert (await running.api("/v1/mesh/publish", {"c": "news", "d": "ok"}))["r"] == {"s": 1, "f": 0}
    assert (await ws.receive(timeout=5)).data == "ok"


@pytest.mark.parametrize("frame_type", [{}, {"t": None}, {"t": ""}, {"t": "text"}])
async def test_every_spelling_of_text_publishes_a_text_frame(running, frame_type):
    """Absent, null, "" and "text" all mean text, as CONNMIX's clients send them."""
    ws = await subscriber(running, "news")
    reply = await running.api("/v1/mesh/publish", {"c": "news", "d": "héllo", **frame_type})
    assert reply == {"E": None, "r": {"s": 1, "f": 0}}
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "héllo")


async def test_publish_reaches_every_subscriber(running):
    first = await subscriber(running, "news")
    second = await subscriber(running, "news", "other")
    nobody = await subscriber(running, "other")
    reply = await running.api("/v1/mesh/publish", {"c": "news", "d": "héllo"})
    assert reply == {"E": None, "r": {"s": 2, "f": 0}}
    assert (await first.receive(timeout=5)).data == "héllo"
    assert (await second.receive(timeout=5)).data == "héllo"
    await assert_silent(nobody)
    assert (await running.api("/v1/mesh/publish", {"c": "empty", "d": "x"}))["r"] == {"s": 0, "f": 0}


async def test_binary_publish_arrives_as_a_binary_frame(running):
    ws = await subscriber(running, "news")
    data = bytes(range(256))
    reply = await running.api("/v1/mesh/publish",
                              {"c": "news", "d": base64.b64encode(data).decode(), "t": "binary"})
    assert reply["r"] == {"s": 1, "f": 0}
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, data)


# -- HTTP /v1/mesh/send --------------------------------------------------------------------


async def test_send_to_a_known_client_is_delivered(running):
    ws = await running.connect()
    cid = await client_id(ws)
    assert await running.api("/v1/mesh/send", {"c": cid, "d": "just you"}) == {"E": None, "r": {"s": True}}
    assert (await ws.receive(timeout=5)).data == "just you"
    reply = await running.api("/v1/mesh/send", {"c": cid, "d": "AAE=", "t": "binary"})
    assert reply["r"] == {"s": True}
    assert (await ws.receive(timeout=5)).data == b"\x00\x01"


async def test_send_to_an_unknown_or_closed_client_is_401(running):
    reply = await running.api("/v1/mesh/send", {"c": "999999", "d": "x"})
    assert reply["E"]["c"] == 401 and "999999" in reply["E"]["m"]
    ws = await running.connect()
    cid = await client_id(ws)
    await ws.close()
    assert (await running.api("/v1/mesh/send", {"c": cid, "d": "x"}))["E"]["c"] == 401
    assert "c must be" in invalid(await running.api("/v1/mesh/send", {"d": "x"}))
    other = await running.connect()
    other_id = await client_id(other)
    assert (await running.api("/v1/mesh/send", {"c": other_id, "d": "x"}))["r"] == {"s": True}


# -- health and stats ------------------------------------------------------------------


async def test_healthz(running):
    assert await get_json(running, "/healthz") == (200, {"status": "ok"})


async def test_stats_follow_connections_and_subscriptions(running):
    async def stats_become(expected: dict) -> None:
        """Closes finish a moment after the client sees them: poll a little."""
        for _ in range(100):
            status, body = await get_json(running, "/v1/stats")
            assert status == 200 and body["E"] is None
            if body["r"] == expected:
                return
            await asyncio.sleep(0.02)
        assert body["r"] == expected

    await stats_become({"connections": 0, "channels": 0, "subscriptions": 0})
    first = await subscriber(running, "a", "b")
    second = await subscriber(running, "b")
    await stats_become({"connections": 2, "channels": 2, "subscriptions": 3})
    await first.close()
    await stats_become({"connections": 1, "channels": 1, "subscriptions": 1})
    await second.close()
    await stats_become({"connections": 0, "channels": 0, "subscriptions": 0})


# -- the WebSocket API /ws/v1 --------------------------------------------------------------


async def api_ws(running) -> aiohttp.ClientWebSocketResponse:
    return await running.session.ws_connect(running.api_url + "/ws/v1")


async def call(ws, request) -> dict:
    await ws.send_str(request if isinstance(request, str) else orjson.dumps(request).decode())
    return await receive_json(ws)


async def test_ws_api_publish_and_send(running):
    sub = await subscriber(running, "news")
    cid = await client_id(sub)
    api = await api_ws(running)
    reply = await call(api, {"m": "mesh.publish", "p": {"c": "news", "d": "to all"}, "i": 1})
    assert reply == {"E": None, "r": {"s": 1, "f": 0}, "i": 1}
    assert (await sub.receive(timeout=5)).data == "to all"
    reply = await call(api, {"m": "mesh.send", "p": {"c": cid, "d": "AP8=", "t": "binary"}, "i": "two"})
    assert reply == {"E": None, "r": {"s": True}, "i": "two"}
    assert (await sub.receive(timeout=5)).data == b"\x00\xff"
    reply = await call(api, {"m": "mesh.send", "p": {"c": "4242", "d": "x"}, "i": 3})
    assert reply["E"]["c"] == 401 and reply["i"] == 3


async def test_ws_api_text_ping_gets_pong(running):
    api = await api_ws(running)
    await api.send_str("ping")
    assert (await api.receive(timeout=5)).data == "pong"


async def test_ws_api_ping_frame_gets_a_pong_frame(running):
    api = await running.session.ws_connect(running.api_url + "/ws/v1", autoping=False)
    await api.ping(b"hb")
    msg = await api.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"hb")


async def test_ws_api_pipelined_requests_are_answered_in_order(running):
    sub = await subscriber(running, "news")
    api = await api_ws(running)
    for i in range(50):
        await api.send_str(orjson.dumps({"m": "mesh.publish", "p": {"c": "news", "d": str(i)}, "i": i}).decode())
    for i in range(50):
        assert await receive_json(api) == {"E": None, "r": {"s": 1, "f": 0}, "i": i}
    for i in range(50):
        assert (await sub.receive(timeout=5)).data == str(i)


@pytest.mark.parametrize("request_text, says", [
    ("not json", "invalid JSON"),
    ("[1]", "JSON object"),
    ('{"m": "mesh.nothing", "p": {}, "i": 7}', "unknown method"),
    ('{"m": ["mesh.publish"], "p": {}, "i": 7}', "unknown method"),
    ('{"m": {"a": 1}, "i": 7}', "unknown method"),
    ('{"p": {"c": "news", "d": "x"}, "i": 7}', "unknown method"),
    ('{"m": "mesh.publish", "i": 7}', "params"),
    ('{"m": "mesh.publish", "p": "c=news", "i": 7}', "params"),
    ('{"m": "mesh.publish", "p": {"c": 1, "d": "x"}, "i": 7}', "c must be"),
    ('{"m": "mesh.publish", "p": {"c": "news", "d": null}, "i": 7}', "d must be"),
    ('{"m": "mesh.send", "p": {"c": "1", "d": "%%", "t": "binary"}, "i": 7}', "base64"),
])
async def test_ws_api_bad_requests_are_101_and_the_connection_stays_open(running, request_text, says):
    sub = await subscriber(running, "news")
    api = await api_ws(running)
    reply = await call(api, request_text)
    assert says in invalid(reply)
    if '"i": 7' in request_text:
        assert reply["i"] == 7
    await assert_silent(sub, 0.05)
    reply = await call(api, {"m": "mesh.publish", "p": {"c": "news", "d": "after"}, "i": 8})
    assert reply == {"E": None, "r": {"s": 1, "f": 0}, "i": 8}
    assert (await sub.receive(timeout=5)).data == "after"


async def test_ws_api_binary_frame_is_a_request_too(running):
    api = await api_ws(running)
    await api.send_bytes(b'{"m": "mesh.publish", "p": {"c": "x", "d": "y"}, "i": 1}')
    assert await receive_json(api) == {"E": None, "r": {"s": 0, "f": 0}, "i": 1}
    await api.send_bytes(b"\xff\x00")
    assert "invalid JSON" in invalid(await receive_json(api))
    await api.send_str("ping")
    assert (await api.receive(timeout=5)).data == "pong"
