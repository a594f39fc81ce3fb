"""Property test: random and mutated byte streams, split at random points,
thrown at a socket server running each protocol of lua/protocols. The
engine neither crashes nor leaks connections (each fuzz client is forgotten
once it closes, the hub back to zero at the end), no Lua error escapes our
protocol library, and a client alongside keeps being served.

Hypothesis drives the examples from a worker thread; each example runs on
the test's event loop, where the engine lives."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from dataclasses import dataclass
from typing import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.compat.test_socket_protocols import SCRIPTS, protocol_library, script  # noqa: F401 (autouse fixture)
from tests.conftest import ROOT
from tests.raw_websocket import RawWebSocket, client_frame
from tests.tcp_client import TcpClient, packet
from tests.waiting import until

LINE_ECHO = """
local proto = require("protocols.{name}")
function protocol_input(buf) return proto.input(buf) end
function protocol_decode(str, c) return proto.decode(str, c) end
function protocol_encode(str) return proto.encode(str) end
function on_message(msg)
    if type(msg) == "table" then
        conn:send(proto.encode_table({{ id = msg.id, result = msg.method }}))
    else
        conn:send(proto.encode(msg))
    end
end
"""


def websocket_stream(parts: list[bytes]) -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode()
    head = (f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    frames, continuing = [], False
    for i, part in enumerate(parts):  # text, binary, fragments, pings
        if i % 4 == 3:
            frames.append(client_frame(part[:125], 0x9))
            continue
        opcode = 0x0 if continuing else 0x2 if i % 2 else 0x1
        if opcode == 0x1:
            part = part.decode("latin-1").encode()  # UTF-8
        continuing = i % 3 == 1
        frames.append(client_frame(part, opcode, fin=not continuing))
    return head + b"".join(frames)


def json_lines(parts: list[bytes]) -> bytes:
    return b"".join(json.dumps({"id": i, "method": p.hex()}).encode() + b"\n" for i, p in enumerate(parts))


@dataclass
class Protocol:
    entry: Callable[[], str]
    valid: Callable[[list[bytes]], bytes]  # a well-formed stream carrying these payloads
    served: Callable[[int], Awaitable[Callable[[str], Awaitable[None]]]]  # port -> check(word)


async def websocket_control(port: int):
    client = await RawWebSocket.connect(port, "/")

    async def check(word: str) -> None:
        await client.send_text(word)
        assert await client.read_frame() == (0x1, word.encode())
    return check


def tcp_control(request: Callable[[str], bytes], reply: Callable[[TcpClient], Awaitable[str]]):
    async def control(port: int):
        client = await TcpClient.connect(port)

        async def check(word: str) -> None:
            await client.send(request(word))
            assert await reply(client) == word
        return check
    return control


async def jsonrpc_reply(client: TcpClient) -> str:
    return json.loads(await client.recv_line())["result"]


async def packet_reply(client: TcpClient) -> str:
    return (await client.recv_packet()).decode()


async def line_reply(client: TcpClient) -> str:
    return await client.recv_line()


PROTOCOLS = {
    "websocket": Protocol(lambda: script(os.path.join(ROOT, "lua", "entry.socket.lua")),
                          websocket_stream, websocket_control),
    "text": Protocol(lambda: LINE_ECHO.format(name="text"), lambda ps: b"\n".join(ps) + b"\n",
                     tcp_control(lambda w: w.encode() + b"\n", line_reply)),
    "line": Protocol(lambda: LINE_ECHO.format(name="line"), lambda ps: b"\r\n".join(ps) + b"\n",
                     tcp_control(lambda w: w.encode() + b"\r\n", line_reply)),
    "jsonrpc": Protocol(lambda: LINE_ECHO.format(name="jsonrpc"), json_lines,
                        tcp_control(lambda w: json.dumps({"id": 1, "method": w}).encode() + b"\n",
                                    jsonrpc_reply)),
    "length_prefixed": Protocol(lambda: script(os.path.join(SCRIPTS, "socket_length_prefixed_echo.lua")),
                                lambda ps: b"".join(packet(p) for p in ps),
                                tcp_control(lambda w: packet(w.encode()), packet_reply)),
}

payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=6)
# A mutation: (position, new byte) overwrites, a cut at the end.
mutations = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)


def streams(protocol: Protocol):
    def mutate(args) -> bytes:
        parts, changes, cut = args
        data = bytearray(protocol.valid(parts))
        for position, value in changes:
            data[position % len(data)] = value
        return bytes(data[:len(data) - cut % max(len(data), 1)] if cut else data)
    mutated = st.tuples(payloads, mutations, st.integers(0, 400)).map(mutate)
    return st.one_of(st.binary(max_size=3000), mutated)


async def throw(port: int, data: bytes, cuts: list[int]) -> None:
    """Send data in pieces split at the cut points, then hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, stop in zip(points, points[1:], strict=False):
            writer.write(data[start:stop])
            await writer.drain()
            await asyncio.sleep(0)
    except ConnectionError:
        pass  # the server hung up first: a fine answer to bad input
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
async def test_random_and_mutated_streams_neither_crash_nor_leak(start_engine, caplog, name):
    protocol = PROTOCOLS[name]
    running = await start_engine(protocol.entry(), protocol="socket")
    engine, port = running.engine, running.engine.server_port()
    server = engine.servers[0]
    check = await protocol.served(port)
    loop = asyncio.get_running_loop()
    rounds = [0]

    async def one_example(data: bytes, cuts: list[int]) -> None:
        await throw(port, data, cuts)
        await until(lambda: len(server.conns) == 1, "the fuzz client forgotten")
        rounds[0] += 1
        await check(f"still-served-{rounds[0]}")

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=streams(protocol), cuts=st.lists(st.integers(0, 10**6), max_size=8))
    def property_(data: bytes, cuts: list[int]) -> None:
        asyncio.run_coroutine_threadsafe(one_example(data, cuts), loop).result(timeout=30)

    with caplog.at_level(logging.ERROR):
        await asyncio.to_thread(property_)
    assert rounds[0] >= 100
    lua_errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert lua_errors == []  # no Lua error or traceback from any input
    stats = engine.hub.stats()
    assert stats["connections"] == 1
    for conn in list(server.conns):
        conn.close()
    await until(lambda: not server.conns and engine.hub.stats()["connections"] == 0,
                "every connection forgotten")
