"""Bad input from clients and bad scripts: each shows the clear error (a
reply, a close code, a log line with file:line) and that a healthy
connection is still served afterwards."""
from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.helpers import receive_json

ECHO = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.type == "binary" then
        conn:send("binary " .. #msg.data, "binary")
        return
    end
    local data, err = mix.json_decode(msg.data)
    if err then
        conn:send(mix.json_encode({error = err}))
        return
    end
    if data.op == "boom" then
        local missing = nil
        return missing.field -- BOOM
    end
    conn:send(mix.json_encode({echo = data.op}))
end
"""


def line_of(script: str, marker: str) -> int:
    """1-based line of marker in the script as the engine loads it."""
    import textwrap
    for number, line in enumerate(textwrap.dedent(script).splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(f"{marker} not in script")


async def assert_served(ws: aiohttp.ClientWebSocketResponse, op: str = "still-here") -> None:
    await ws.send_str('{"op":"%s"}' % op)
    assert await receive_json(ws) == {"echo": op}


@pytest.fixture
async def echo(start_engine):
    return await start_engine(ECHO)


async def test_invalid_json_is_an_error_value_the_script_handles(echo):
    other = await echo.connect()
    ws = await echo.connect()
    await ws.send_str("{not json")
    reply = await receive_json(ws)
    assert reply["error"].startswith("json_decode:")
    await assert_served(ws)  # the same connection stays open
    await assert_served(other)


async def test_binary_frame_reaches_the_script_as_binary(echo):
    ws = await echo.connect()
    await ws.send_bytes(b"\x00\x01\xff")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"binary 3")
    await assert_served(ws)


async def test_lua_error_in_on_message_closes_with_1011_and_is_logged(echo, caplog):
    other = await echo.connect()
    ws = await echo.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await ws.send_str('{"op":"boom"}')
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1011
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert f"entry0.lua:{line_of(ECHO, '-- BOOM')}:" in logged
    assert "stack traceback" in logged
    assert "on_message" in logged
    await assert_served(other)
    await assert_served(await echo.connect())


async def test_lua_error_in_on_handshake_refuses_with_500(start_engine, caplog):
    script = """
    function on_handshake(client_id, headers, server)
        if headers["X-Boom"] then
            error("handshake exploded") -- HANDSHAKE
        end
    end
    function on_message(msg)
        mix.websocket():send("ok")
    end
    """
    running = await start_engine(script)
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await running.connect(headers={"X-Boom": "1"})
    assert refused.value.status == 500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"entry0.lua:{line_of(script, '-- HANDSHAKE')}: handshake exploded" in logged
    assert running.engine.stats()["connections"] == 0
    ws = await running.connect()
    await ws.send_str("hi")
    assert (await ws.receive(timeout=5)).data == "ok"


async def test_lua_error_in_on_close_is_logged_and_others_go_on(start_engine, caplog):
    script = """
    closes = 0
    function on_message(msg)
        mix.websocket():send("closes=" .. closes)
    end
    function on_close(client_id, err)
        closes = closes + 1
        error("on_close exploded") -- CLOSE
    end
    """
    running = await start_engine(script)
    other = await running.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        ws = await running.connect()
        await ws.close()
        await other.send_str("count")
        assert (await other.receive(timeout=5)).data == "closes=1"
    logged = [r.getMessage() for r in caplog.records if "on_close" in r.getMessage()]
    assert len(logged) == 1
    assert f"entry0.lua:{line_of(script, '-- CLOSE')}: on_close exploded" in logged[0]
    await other.send_str("count")
    assert (await other.receive(timeout=5)).data == "closes=1"  # ran exactly once


async def test_wrong_argument_to_mix_is_an_error_value(start_engine):
    script = """
    function on_message(msg)
        local conn = mix.websocket()
        local tb, err = mix.json_decode({})
        local err2 = conn:subscribe("has space")
        conn:send(tostring(tb) .. "|" .. tostring(err) .. "|" .. tostring(err2))
    end
    """
    running = await start_engine(script)
    ws = await running.connect()
    await ws.send_str("x")
    reply = (await ws.receive(timeout=5)).data
    value, err, err2 = reply.split("|")
    assert value == "nil"
    assert "bad argument #1" in err and "json_decode" in err
    assert "channel" in err2
    await ws.send_str("again")  # still open
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT
