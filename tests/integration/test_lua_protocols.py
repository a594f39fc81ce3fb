"""Our lua/protocols library through real clients: websocket.lua (RFC 6455
in Lua on a socket server) with aiohttp's and the websockets library's
clients and a raw one, the message-centre flow over it, text.lua and
jsonrpc.lua with TCP clients."""
from __future__ import annotations

import asyncio
import json
import os
import struct

import aiohttp
import pytest
import websockets

# protocol_library: an autouse fixture, lua/protocols beside the entry.
from connmix_py import Engine, parse_settings
from tests.compat.test_socket_protocols import protocol_library, script  # noqa: F401
from tests.conftest import EXAMPLE_DIR, ROOT
from tests.helpers import receive_json
from tests.raw_websocket import RawWebSocket, client_frame
from tests.tcp_client import TcpClient
from tests.waiting import until

DEFAULT_ENTRY = os.path.join(ROOT, "lua", "entry.socket.lua")
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


async def start(start_engine, script: str, **settings):
    running = await start_engine(script, protocol="socket", **settings)
    return running, running.engine.server_port()


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def text_of(size: int) -> str:
    return ("héllo wörld ✓ " * (size // 10 + 1)).encode()[:size].decode("utf-8", "ignore")


# -- the default socket entry: a websocket echo -----------------------------------------


async def test_default_entry_echoes_aiohttp_text_and_binary_of_every_length_class(start_engine, session):
    _, port = await start(start_engine, script(DEFAULT_ENTRY))
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/any/path")
    for size in SIZES:
        text = text_of(size)
        await ws.send_str(text)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, text), size
        data = pattern(size)
        await ws.send_bytes(data)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, data), size
    await ws.close()
    assert ws.close_code == 1000


async def test_default_entry_with_the_websockets_library(start_engine):
    running, port = await start(start_engine, script(DEFAULT_ENTRY))
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        for size in SIZES:
            await ws.send(text_of(size))
            assert await asyncio.wait_for(ws.recv(), 10) == text_of(size)
            await ws.send(pattern(size))
            assert await asyncio.wait_for(ws.recv(), 10) == pattern(size)
        # A fragmented message (text, then binary): one message back, whole.
        await ws.send(["fragm", "ented ", "✓"])
        assert await asyncio.wait_for(ws.recv(), 10) == "fragmented ✓"
        await ws.send([pattern(70000), pattern(3), b""])
        assert await asyncio.wait_for(ws.recv(), 10) == pattern(70000) + pattern(3)
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        await ws.send("after the ping")
        assert await asyncio.wait_for(ws.recv(), 10) == "after the ping"
    assert ws.close_code == 1000  # the server answered the close handshake
    await until(lambda: not running.engine.hub.conns, "the connection forgotten")


async def test_publishes_reach_a_socket_websocket_client_through_protocol_encode(start_engine, session):
    running, port = await start(start_engine, script(DEFAULT_ENTRY).replace(
        "function on_message(msg)", "function on_message(msg)\n    conn:subscribe(msg.data)", 1))
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/")
    await ws.send_str("news")
    assert (await ws.receive(timeout=5)).data == "news"
    assert await running.engine.publish("news", '{"n": 1}') == (1, 0)
    assert await receive_json(ws) == {"n": 1}
    # protocol_encode is not told the type: bytes that are not UTF-8 go out
    # as a binary frame (a text frame must be UTF-8).
    assert await running.engine.publish("news", b"\xff\x00", type="binary") == (1, 0)
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\xff\x00")


# -- protocol errors, with a raw client -----------------------------------------------------


@pytest.mark.parametrize("frame, code", [
    (bytes([0x81, 0x02]) + b"hi", 1002),                      # not masked
    (bytes([0xC1, 0x80]) + b"\x00" * 4, 1002),                # RSV1 set
    (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),                # reserved opcode
    (bytes([0x80, 0x80]) + b"\x00" * 4, 1002),                # continuation of nothing
    (bytes([0x09, 0x80]) + b"\x00" * 4, 1002),                # fragmented ping
    (bytes([0x81, 0x82]) + b"\x00" * 4 + b"\xc3\x28", 1007),  # text not UTF-8
    (bytes([0x82, 0xFF]) + struct.pack("!Q", 2**40) + b"\x00" * 4, 1009),  # announces 1 TB
    (bytes([0x88, 0x82]) + b"\x00" * 4 + struct.pack("!H", 1005), 1002),  # close code never sent
])
async def test_protocol_errors_close_with_the_rfc_code_and_others_are_served(start_engine, frame, code):
    running, port = await start(start_engine, script(DEFAULT_ENTRY))
    bad = await RawWebSocket.connect(port, "/")
    await bad.send_bytes(frame)
    opcode, payload = await bad.read_frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code, payload
    good = await RawWebSocket.connect(port, "/")
    await good.send_text("still served")
    assert await good.read_frame() == (0x1, b"still served")
    await until(lambda: len(running.engine.hub.conns) == 1, "the bad client closed")


async def test_close_handshake_and_frames_split_anywhere(start_engine):
    _, port = await start(start_engine, script(DEFAULT_ENTRY))
    client = await RawWebSocket.open(port)
    status, head = await client.handshake("/", then=b"")
    assert status == 101 and b"Sec-WebSocket-Accept:" in head
    # A ping between a message's fragments, one byte per write.
    stream = client_frame(b"split", 0x1, fin=False) + client_frame(b"bye", 0x9) + client_frame(b" up", 0x0)
    for i in range(len(stream)):
        await client.send_bytes(stream[i:i + 1])
    assert await client.read_frame() == (0xA, b"bye")
    assert await client.read_frame() == (0x1, b"split up")
    await client.send_frame(struct.pack("!H", 1001) + b"going", 0x8)
    assert await client.read_frame() == (0x8, struct.pack("!H", 1001))


async def test_send_text_refuses_bytes_that_are_not_utf8_and_close_sends_a_close(start_engine):
    source = script(DEFAULT_ENTRY).replace("function on_message(msg)", """function on_message(msg)
    if msg.data == "bad-text" then
        local ok, err = websocket.send_text("caf\\195")
        websocket.send_text(tostring(ok) .. " " .. err)
        return
    elseif msg.data == "close-me" then
        websocket.close(conn, 4000, "bye")
        return
    end""", 1)
    _, port = await start(start_engine, source)
    client = await RawWebSocket.connect(port, "/")
    await client.send_text("bad-text")
    assert await client.read_frame() == (0x1, b"nil text is not UTF-8 (send it as binary)")
    await client.send_text("close-me")
    assert await client.read_frame() == (0x8, struct.pack("!H", 4000) + b"bye")
    with pytest.raises(ConnectionError):
        await client.read_frame()  # then the server hangs up


async def test_handshake_refusals(start_engine):
    source = script(DEFAULT_ENTRY).replace("websocket.input(buf, on_handshake)",
                                        "websocket.input(buf, conn, '/chat', function(headers, c)\n"
                                        "        return headers['X-Token'] ~= 'bad'\n    end)")
    _, port = await start(start_engine, source)
    assert (await (await RawWebSocket.open(port)).handshake("/other"))[0] == 404
    assert (await (await RawWebSocket.open(port)).handshake("/chat", version="8"))[0] == 426
    assert (await (await RawWebSocket.open(port)).handshake("/chat", {"X-Token": "bad"}))[0] == 403
    plain = await TcpClient.connect(port)
    await plain.send(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await plain.recv_line()).startswith("HTTP/1.1 400")
    ok = await RawWebSocket.connect(port, "/chat?x=1", headers={"X-Token": "good"})
    await ok.send_text("hi")
    assert await ok.read_frame() == (0x1, b"hi")


# -- the message centre over websocket.lua ------------------------------------------------------

# The example's on_message as it is, its replies framed by websocket.lua
# (conn:send on a socket server writes bytes as given); the protocol
# callbacks in the arguments' shape of connmix/protocols.
MESSAGE_CENTRE_HEAD = """
local websocket = require("protocols/websocket")

function protocol_input(buf, c)
    return websocket.input(buf, c, "/message-center", function(headers, c) end)
end

function protocol_decode(str, c)
    return websocket.decode(c)
end

function protocol_encode(str, c)
    return websocket.encode(str)
end
"""


async def test_message_centre_flow_over_websocket_lua(start_engine, auth_app, session):
    example = script(os.path.join(EXAMPLE_DIR, "entry.websocket.lua"))
    assert example.count("conn:send(") >= 3
    source = MESSAGE_CENTRE_HEAD + auth_app.serve(example).replace("conn:send(", "websocket.send_text(conn, ")
    running, port = await start(start_engine, source)
    auth_app.config["engine_api"] = f"http://127.0.0.1:{running.engine.api_port}"
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/message-center")
    await ws.send_str('{"op":"auth","token":"***"}')
    assert await receive_json(ws) == {"result": True}
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    event = {"event": "@user", "data": {"uid": 1001, "msg": "Hello,World!"}}
    reply = await running.api("/v1/mesh/publish", {"c": "user:1001", "d": json.dumps(event)})
    assert reply["r"] == {"s": 1, "f": 0}
    assert await receive_json(ws) == event
    stranger = await session.ws_connect(f"http://127.0.0.1:{port}/message-center")
    await stranger.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(stranger) == {"code": 1, "msg": "Not Auth"}


# -- text.lua and jsonrpc.lua -----------------------------------------------------------------

TEXT_SCRIPT = """
local text = require("protocols.text")
function protocol_input(buf) return text.input(buf) end
function protocol_decode(str) return text.decode(str) end
function protocol_encode(str) return text.encode(str) end
function on_message(line)
    conn:subscribe("all")
    conn:send(text.encode("[" .. line .. "]"))
end
"""


async def test_text_protocol(start_engine):
    running, port = await start(start_engine, TEXT_SCRIPT)
    conn = await TcpClient.connect(port)
    await conn.send(b"one\ntw")
    assert await conn.recv_line() == "[one]"
    await conn.send(b"o\r\n\n")
    assert await conn.recv_exactly(6) == b"[two\r]"  # only "\n" ends a packet, as CONNMIX's
    assert await conn.recv_exactly(1) == b"\n"
    assert await conn.recv_line() == "[]"
    assert await running.engine.publish("all", "to all") == (1, 0)
    assert await conn.recv_line() == "to all"  # through protocol_encode: one newline
    flood = await TcpClient.connect(port)
    await flood.send(b"x" * 65536)
    await flood.assert_closed()
    await conn.send_line("still")
    assert await conn.recv_line() == "[still]"


JSONRPC_SCRIPT = """
local jsonrpc = require("protocols.jsonrpc")
function protocol_input(buf) return jsonrpc.input(buf) end
function protocol_decode(str, c) return jsonrpc.decode(str, c) end
function protocol_encode(str) return jsonrpc.encode(str) end
function on_message(req)
    local params = req.params or {}
    local result = req.method == "add" and params[1] + params[2] or req.method
    conn:send(jsonrpc.encode_table({ jsonrpc = "2.0", id = req.id, result = result }))
end
"""


async def test_jsonrpc_protocol(start_engine):
    running, port = await start(start_engine, JSONRPC_SCRIPT)
    conn = await TcpClient.connect(port)
    await conn.send(b'{"jsonrpc":"2.0","id":1,"method":"add","params":[2,3]}\n{"id":2,"method":"ping"}\n')
    assert json.loads(await conn.recv_line()) == {"jsonrpc": "2.0", "id": 1, "result": 5}
    assert json.loads(await conn.recv_line()) == {"jsonrpc": "2.0", "id": 2, "result": "ping"}
    await conn.assert_silent()  # encode_table's one newline, no second
    for bad in (b"not json\n", b'{"params":[]}\n', b"[1,2]\n", b"7\n"):
        client = await TcpClient.connect(port)
        await client.send(bad)
        await client.assert_closed()
    await conn.send(b'{"id":3,"method":"add","params":[1,1]}\n')
    assert json.loads(await conn.recv_line())["result"] == 2
    await conn.close()
    await until(lambda: not running.engine.hub.conns, "every connection forgotten")


# -- the shipped layout, and a hot update -------------------------------------------------------


async def test_shipped_entry_finds_lua_protocols_in_the_sandbox():
    settings = parse_settings({"engine": {
        "apiServer": {"port": 0, "bind": "127.0.0.1"}, "luavm": {"sandbox": True},
        "servers": [{"port": 0, "bind": "127.0.0.1", "protocol": "socket", "entry": DEFAULT_ENTRY}]}})
    engine = Engine(settings)
    await engine.start()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{engine.server_port()}/chat") as ws:
            await ws.send("from lua/protocols")
            assert await asyncio.wait_for(ws.recv(), 10) == "from lua/protocols"
    finally:
        await engine.stop()


async def test_an_upgraded_connection_survives_a_hot_update(start_engine, tmp_path):
    running, port = await start(start_engine, script(DEFAULT_ENTRY), byteCodeExpires=0.2)
    entry = running.engine.settings.servers[0].entry
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send("before")
        assert await asyncio.wait_for(ws.recv(), 10) == "before"
        source = script(DEFAULT_ENTRY).replace("websocket.send_text(msg.data)",
                                               'websocket.send_text("v2 " .. msg.data)')
        with open(entry, "w", encoding="utf-8") as f:
            f.write(source)
        stamp = os.stat(entry).st_mtime_ns + 2_000_000_000
        os.utime(entry, ns=(stamp, stamp))
        for _ in range(50):  # the reload happens on its own tick
            await ws.send("after")
            reply = await asyncio.wait_for(ws.recv(), 10)
            if reply != "after":
                break
            await asyncio.sleep(0.1)
        # The new state knows the upgrade from the context value "__handshake".
        assert reply == "v2 after"
