"""RFC 6455 strictness (issue 8, finding 9): what a client sends that the RFC
forbids closes that connection with the RFC's code and on_close gets why;
text that is not UTF-8 is refused before any websocket client gets it.
Socket servers carry bytes and are not affected."""
from __future__ import annotations

import asyncio
import struct

import aiohttp
import pytest

from connmix_py import Engine, parse_settings
from tests.helpers import assert_silent, receive_json
from tests.luahelp import EVAL_SCRIPT, ask
from tests.raw_websocket import RawWebSocket, client_frame
from tests.tcp_client import TcpClient

SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "watch" then
        conn:subscribe("events")
        conn:send("watching")
    elseif msg.data == "news" then
        conn:subscribe("news")
        conn:send(conn:client_id())
    else
        conn:send("echo " .. msg.data)
    end
end

function on_close(client_id, err)
    mix.mesh.publish("events", mix.json_encode({closed = client_id, err = tostring(err)}))
end
"""

OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_CLOSE = 0x1, 0x2, 0x0, 0x8
NOT_UTF8 = b"caf\xc3"  # a two-byte sequence cut short


async def watcher(running) -> aiohttp.ClientWebSocketResponse:
    ws = await running.connect()
    await ws.send_str("watch")
    assert (await ws.receive(timeout=5)).data == "watching"
    return ws


async def raw_client(running) -> tuple[RawWebSocket, str]:
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_frame(b"news")
    _, cid = await raw.read_frame()
    return raw, cid.decode()


async def watched_client(start_engine) -> tuple:
    """(running, events, raw, cid): a raw client whose on_close is reported to events."""
    running = await start_engine(SCRIPT)
    events = await watcher(running)
    raw, cid = await raw_client(running)
    return running, events, raw, cid


async def closed_with(raw: RawWebSocket) -> int:
    """The close code of the server's next frame, which must be a close;
    answered like a browser does (the server may have hung up already)."""
    opcode, payload = await raw.read_frame()
    assert opcode == OP_CLOSE, (opcode, payload)
    try:
        await raw.send_frame(payload[:2], OP_CLOSE)
    except OSError:
        pass
    return struct.unpack("!H", payload[:2])[0]


async def close_reason(events, cid: str) -> str:
    event = await receive_json(events)
    assert event["closed"] == cid
    return event["err"]


async def assert_failed(raw: RawWebSocket, events, cid: str, code: int, why: str) -> None:
    """The server closed with code and on_close got a reason saying why."""
    assert await closed_with(raw) == code
    assert why in await close_reason(events, cid)


async def assert_served(running) -> None:
    ws = await running.connect()
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "echo hello"
    await ws.close()


# -- receiving --------------------------------------------------------------------------


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(NOT_UTF8)
    await assert_failed(raw, events, cid, 1007, "UTF-8")  # no echo first: on_message never saw it
    await assert_served(running)


async def test_a_fragmented_text_message_is_checked_whole(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    euro = "€".encode()  # split across two fragments: valid once joined
    await raw.send_frame(b"1 " + euro[:2], OP_TEXT, fin=False)
    await raw.send_frame(euro[2:], OP_CONTINUATION)
    assert await raw.read_frame() == (OP_TEXT, b"echo 1 " + euro)
    await raw.send_frame(b"2 " + euro[:2], OP_TEXT, fin=False)
    await raw.send_frame(b"!", OP_CONTINUATION)
    await assert_failed(raw, events, cid, 1007, "UTF-8")


async def test_binary_frames_are_not_checked(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    ws = await running.connect()
    await ws.send_bytes(NOT_UTF8)
    assert (await ws.receive(timeout=5)).data == NOT_UTF8  # EVAL_SCRIPT echoes binary


async def test_an_unmasked_frame_closes_with_1002(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(b"bare", masked=False)
    await assert_failed(raw, events, cid, 1002, "unmasked")
    await assert_served(running)


async def test_frames_before_an_unmasked_one_in_the_same_read_are_handled(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    big = b"b" * 70000  # a 64-bit length, its payload skipped by the check
    await raw.send_bytes(client_frame(b"first") + client_frame(big) + client_frame(b"bare", masked=False))
    assert await raw.read_frame() == (OP_TEXT, b"echo first")
    assert await raw.read_frame() == (OP_TEXT, b"echo " + big)
    await assert_failed(raw, events, cid, 1002, "unmasked")


async def test_frames_split_anywhere_across_reads_are_followed(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    stream = (client_frame(b"s" * 300) + client_frame(b"m" * 70000) + client_frame(b"tiny")
              + client_frame(b"bare", masked=False))
    # Cuts inside the 16-bit and 64-bit length headers, the masks and the payloads.
    # Frames start at 0, 308, 70322 and 70332 (headers of 8, 14, 6 and 2 bytes).
    cuts = [1, 3, 5, 7, 300, 309, 315, 320, 40000, 70323, 70325, 70330, 70333]
    for start, end in zip([0] + cuts, cuts + [len(stream)], strict=True):
        await raw.send_bytes(stream[start:end])
        await asyncio.sleep(0.02)  # separate reads on the server
    assert await raw.read_frame() == (OP_TEXT, b"echo " + b"s" * 300)
    assert await raw.read_frame() == (OP_TEXT, b"echo " + b"m" * 70000)
    assert await raw.read_frame() == (OP_TEXT, b"echo tiny")
    await assert_failed(raw, events, cid, 1002, "unmasked")


async def test_an_unmasked_frame_sent_with_the_upgrade_request_is_refused(start_engine):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.open(running.engine.server_port())
    # Bytes read before aiohttp's frame parser exists are checked too.
    early = client_frame(b"first") + client_frame(b"bare", masked=False)
    status, _ = await raw.handshake(running.path, then=early)
    assert status == 101
    assert await raw.read_frame() == (OP_TEXT, b"echo first")
    assert await closed_with(raw) == 1002


@pytest.mark.parametrize("version", ["8", "7", "14"])
async def test_a_websocket_version_other_than_13_is_426_naming_13(start_engine, version):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.open(running.engine.server_port())
    status, head = await raw.handshake(running.path, version=version)
    assert status == 426
    assert b"\r\nsec-websocket-version: 13" in head.lower()
    raw.drop()
    assert running.engine.stats()["connections"] == 0
    await assert_served(running)


async def test_the_101_answers_the_rfcs_sample_key(start_engine):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.open(running.engine.server_port())
    await raw.send_upgrade_request(running.path, key="dGhlIHNhbXBsZSBub25jZQ==")  # RFC 6455 1.3
    status, head = await raw.read_head()
    assert status == 101
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    await raw.send_frame(b"hi")
    assert await raw.read_frame() == (OP_TEXT, b"echo hi")
    raw.drop()


@pytest.mark.parametrize("code", [1006, 5000, 1004, 1005, 1015, 999, 2000])
async def test_a_close_frame_with_an_invalid_code_is_a_protocol_error(start_engine, code):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(struct.pack("!H", code), OP_CLOSE)
    assert await closed_with(raw) == 1002
    reason = await close_reason(events, cid)
    assert "protocol error" in reason and str(code) in reason


async def test_a_one_byte_close_payload_is_a_protocol_error(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(b"\x03", OP_CLOSE)
    await assert_failed(raw, events, cid, 1002, "protocol error")


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4000, 4999])
async def test_a_close_frame_with_a_valid_code_is_clean(start_engine, code):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(struct.pack("!H", code) + b"bye", OP_CLOSE)
    assert await closed_with(raw) == 1000
    assert await close_reason(events, cid) == "nil"


async def test_a_close_frame_without_a_code_is_clean(start_engine):
    running, events, raw, cid = await watched_client(start_engine)
    await raw.send_frame(b"", OP_CLOSE)
    assert await closed_with(raw) == 1000
    assert await close_reason(events, cid) == "nil"


# -- sending: text must be UTF-8 -----------------------------------------------------------


async def news_reader(running) -> aiohttp.ClientWebSocketResponse:
    ws = await running.connect()
    await ws.send_str("news")
    await ws.receive(timeout=5)
    return ws


async def test_http_api_refuses_text_that_is_not_utf8_with_101(start_engine, session):
    running = await start_engine(SCRIPT)
    reader = await news_reader(running)
    for body in (b'{"c": "news", "d": "caf\xc3"}', b'{"c": "news", "d": "\\ud800"}'):
        for path in ("/v1/mesh/publish", "/v1/mesh/send"):
            reply = await running.api(path, body)
            assert reply["E"]["c"] == 101, reply
    await assert_silent(reader)


async def test_ws_api_refuses_text_that_is_not_utf8_with_101(start_engine, session):
    running = await start_engine(SCRIPT)
    reader = await news_reader(running)
    api = await session.ws_connect(running.api_url + "/ws/v1")
    await api.send_str('{"m": "mesh.publish", "p": {"c": "news", "d": "\\ud800"}, "i": 1}')
    assert (await receive_json(api))["E"]["c"] == 101
    await api.send_bytes(b'{"m": "mesh.publish", "p": {"c": "news", "d": "caf\xc3"}, "i": 2}')
    assert (await receive_json(api))["E"]["c"] == 101
    await assert_silent(reader)


async def test_conn_send_refuses_text_that_is_not_utf8(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    ws = await running.connect()
    err, = await ask(ws, r'return conn:send("caf\195")')  # the reply is the first frame
    assert "UTF-8" in err
    await ws.send_str(r'return conn:send("caf\195", "binary")')
    assert (await ws.receive(timeout=5)).data == b"caf\xc3"
    assert (await ws.receive(timeout=5)).json() == ["<nil>"]


async def test_mesh_publish_and_send_refuse_text_that_is_not_utf8(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    reader = await running.connect()
    cid, = await ask(reader, 'conn:subscribe("news"); return conn:client_id()')
    ws = await running.connect()
    s, err = await ask(ws, r'return mix.mesh.publish("news", "caf\195")')
    assert s == "<nil>" and "UTF-8" in err
    err, = await ask(ws, r'return mix.mesh.send("%s", "caf\195")' % cid)
    assert "UTF-8" in err
    await assert_silent(reader)
    assert await ask(ws, r'return mix.mesh.publish("news", "caf\195", "binary")') == [1, 0]
    assert (await reader.receive(timeout=5)).data == b"caf\xc3"


async def test_python_publish_and_send_raise_value_error_for_text_that_is_not_utf8(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    reader = await running.connect()
    cid, = await ask(reader, 'conn:subscribe("news"); return conn:client_id()')
    with pytest.raises(ValueError, match="UTF-8"):
        await running.engine.publish("news", NOT_UTF8)
    with pytest.raises(ValueError, match="UTF-8"):
        await running.engine.send(cid, NOT_UTF8)
    await assert_silent(reader)
    assert await running.engine.publish("news", NOT_UTF8, "binary") == (1, 0)


SOCKET_SCRIPT = r"""
function protocol_input(buf, c)
    local stop = buf:tostring():find("\n", 1, true)
    return stop or 0
end

function protocol_decode(str, c)
    return str:sub(1, -2)
end

function protocol_encode(str, c)
    return str .. "\n"
end

function on_message(msg)
    local conn = mix.socket.tcp()
    if msg == "sub" then
        conn:subscribe("bytes")
        conn:send("ok\n")
    else
        conn:send(msg .. "\255\n")
    end
end
"""


async def test_socket_servers_carry_text_that_is_not_utf8(tmp_path):
    entry = tmp_path / "entry.lua"
    entry.write_text(SOCKET_SCRIPT)
    settings = parse_settings({"engine": {
        "apiServer": {"port": 0, "bind": "127.0.0.1"},
        "servers": [{"port": 0, "bind": "127.0.0.1", "protocol": "socket", "entry": str(entry)}]}})
    engine = Engine(settings)
    await engine.start()
    try:
        client = await TcpClient.connect(engine.server_port())
        await client.send(b"sub\n")
        assert await client.recv_exactly(3) == b"ok\n"
        await client.send(b"caf\xc3\n")  # conn:send appends \255
        assert await client.recv_exactly(6) == b"caf\xc3\xff\n"
        assert await engine.publish("bytes", NOT_UTF8) == (1, 0)
        assert await client.recv_exactly(5) == NOT_UTF8 + b"\n"
    finally:
        await engine.stop()


# The backend WebSocket API (/ws/v1) holds its clients to the same rules.

async def test_the_websocket_api_refuses_other_versions_and_unmasked_frames(start_engine):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.open(running.engine.api_port)
    status, head = await raw.handshake("/ws/v1", version="8")
    assert status == 426 and b"\r\nsec-websocket-version: 13" in head.lower()
    raw.drop()
    raw = await RawWebSocket.open(running.engine.api_port)
    assert (await raw.handshake("/ws/v1"))[0] == 101
    await raw.send_frame(b"ping")
    assert await raw.read_frame() == (OP_TEXT, b"pong")
    await raw.send_frame(b"ping", masked=False)
    assert await closed_with(raw) == 1002
    raw.drop()
    await assert_served(running)
