"""Custom protocols over TCP, the way CONNMIX scripts write them: a
length-prefixed echo, a line-based chat and a binary game protocol on the
lua/protocols library, and a script in the old calling style."""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

from tests.conftest import ROOT
from tests.tcp_client import TcpClient, packet

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def script(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(autouse=True)
def protocol_library(tmp_path):
    """lua/protocols beside the entry, as in a CONNMIX install."""
    shutil.copytree(os.path.join(ROOT, "lua", "protocols"), tmp_path / "protocols")


async def start(start_engine, path: str, **settings):
    running = await start_engine(script(path), protocol="socket", **settings)
    return running, running.engine.server_port()


# -- a length-prefixed echo --------------------------------------------------------------


async def test_length_prefixed_echo(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_length_prefixed_echo.lua"))
    conn = await TcpClient.connect(port)
    body = bytes(range(256)) * 40  # binary, 10 KB: several reads
    await conn.send(packet(b"hello") + packet(b"") + packet(body)[:100])
    assert await conn.recv_packet() == b"hello"
    await conn.send(packet(body)[100:])
    # The empty packet is echoed as a bare header.
    assert await conn.recv_packet() == b""
    assert await conn.recv_packet() == body


async def test_length_prefixed_disconnects_an_oversized_announcement(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_length_prefixed_echo.lua"))
    liar = await TcpClient.connect(port)
    await liar.send(struct.pack("!I", 2**31))  # announces 2 GB
    await liar.assert_closed()
    conn = await TcpClient.connect(port)
    await conn.send_packet(b"fine")
    assert await conn.recv_packet() == b"fine"


# -- a newline protocol ------------------------------------------------------------------


async def test_line_chat(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_line_chat.lua"))
    ann, bob, eve = [await TcpClient.connect(port) for _ in range(3)]
    for conn in (ann, bob, eve):
        assert (await conn.recv_line()).startswith("WELCOME ")

    await ann.send(b"SAY too early\r\nNICK ann\r\n\r\nJOIN lobby\r\n")  # CRLF and a blank line
    assert await ann.recv_line() == "ERR nick first"
    assert await ann.recv_line() == "OK"
    assert await ann.recv_line() == "* ann joined"
    assert await ann.recv_line() == "OK 1"
    await bob.send(b"NICK bob\nJOIN lobby\n")
    assert await bob.recv_line() == "OK"
    assert await ann.recv_line() == "* bob joined"
    assert await bob.recv_line() == "* bob joined"
    assert await bob.recv_line() == "OK 2"
    await eve.send(b"NICK eve\nJOIN cellar\n")
    assert [await eve.recv_line() for _ in range(3)] == ["OK", "* eve joined", "OK 1"]

    await bob.send(b"SAY hi ")  # a line in two writes
    await bob.send(b"all\n")
    assert await ann.recv_line() == "<bob> hi all"
    assert await bob.recv_line() == "<bob> hi all"
    await eve.assert_silent()

    await bob.send_line("QUIT")
    assert await bob.recv_line() == "BYE"
    await bob.assert_closed()
    assert await ann.recv_line() == "* bob left"
    await ann.send_line("DANCE")
    assert await ann.recv_line() == "ERR unknown DANCE"


async def test_line_chat_disconnects_an_endless_line(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_line_chat.lua"))
    flood = await TcpClient.connect(port)
    await flood.recv_line()
    await flood.send(b"x" * (64 * 1024 + 1))  # over the module's max_line, no newline
    await flood.assert_closed()
    conn = await TcpClient.connect(port)
    await conn.recv_line()
    await conn.send_line("NICK zed")
    assert await conn.recv_line() == "OK"


# -- a length-prefixed binary protocol (php_pack / php_unpack) ------------------------


def op(code: int, fmt: str = "", *values) -> bytes:
    return packet(struct.pack("!H" + fmt, code, *values))


def fields(body: bytes, fmt: str) -> tuple:
    return struct.unpack("!" + fmt, body)


async def test_binary_game_protocol(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_binary_game.lua"))
    p1, p2 = await TcpClient.connect(port), await TcpClient.connect(port)

    await p1.send(op(2, "HH", 1, 1))  # MOVE before LOGIN
    body = await p1.recv_packet()
    assert (fields(body[:2], "H"), body[2:]) == ((255,), b"login first")

    await p1.send(op(1, "I", 4_000_000_001))  # LOGIN: player id above 2^31
    assert fields(await p1.recv_packet(), "HIH") == (1, 4_000_000_001, 1)
    await p2.send(op(1, "I", 7))
    assert fields(await p2.recv_packet(), "HIH") == (1, 7, 2)

    both = op(2, "HH", 10, 65535) + op(3, "Q", 1_700_000_000_123)  # MOVE then PING, one write
    await p1.send(both[:5])
    await p1.send(both[5:])
    assert fields(await p2.recv_packet(), "HIHH") == (2, 4_000_000_001, 10, 65535)
    assert fields(await p1.recv_packet(), "HIHH") == (2, 4_000_000_001, 10, 65535)
    assert fields(await p1.recv_packet(), "HQ") == (3, 1_700_000_000_123)

    await p2.send(op(9) + packet(b"x"))
    assert (await p2.recv_packet())[2:] == b"unknown opcode 9"
    assert (await p2.recv_packet())[2:] == b"short packet"
    await p2.send(op(2, "B", 1))  # MOVE with a truncated body
    error = await p2.recv_packet()
    assert error[:2] == b"\x00\xff" and b"not enough input" in error.lower()


# -- the old calling style -----------------------------------------------------------------


async def recv_netstring(conn: TcpClient) -> dict:
    digits = b""
    while not digits.endswith(b":"):
        digits += await conn.recv_exactly(1)
    return json.loads(await conn.recv_exactly(int(digits[:-1])))


def netstring(value) -> bytes:
    body = json.dumps(value).encode()
    return str(len(body)).encode() + b":" + body


async def test_old_style_script_with_the_connection_as_last_argument(start_engine):
    _, port = await start(start_engine, os.path.join(SCRIPTS, "socket_old_style.lua"))
    auditor = await TcpClient.connect(port)
    await auditor.send(netstring({"op": "audit"}))
    assert await recv_netstring(auditor) == {"ok": True}

    conn = await TcpClient.connect(port)
    await conn.send(netstring({"op": "whoami"}) + netstring({"op": "add", "a": 2, "b": 3}))
    client_id = (await recv_netstring(conn))["id"]
    assert await recv_netstring(conn) == {"sum": 5, "packets": 2}
    await conn.send(b"7:{oops!}" + netstring({"op": "add", "a": 1, "b": 1})[:4])
    assert await recv_netstring(conn) == {"error": "invalid json"}
    await conn.send(netstring({"op": "add", "a": 1, "b": 1})[4:])
    assert await recv_netstring(conn) == {"sum": 2, "packets": 4}
    await conn.close()
    assert await recv_netstring(auditor) == {"closed": client_id, "packets": 4}

    bad = await TcpClient.connect(port)
    await bad.send(b"x:{}")  # not a length: protocol_input returns -1
    await bad.assert_closed()
    event = await recv_netstring(auditor)
    assert event["packets"] == 0 and event["closed"] != client_id
