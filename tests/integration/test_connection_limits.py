"""What a client that connects and then sends slowly, too much or nothing
may cost, on every port (issue 8): request-head and body timeouts,
maxConnections, one log line for an oversized head, unfinished socket
packets, and accept() failures when file descriptors run out. Each test
shows that the port still serves afterwards."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest
import yaml

from connmix_py import Engine, parse_settings
from connmix_py.config import ConfigError
from tests.conftest import engine_config
from tests.tcp_client import TcpClient, packet

# Far longer than any timeout set below: only a hang guard.
GUARD = 15

ECHO = """
function on_message(msg)
    mix.websocket():send(msg.data)
end
"""

SOCKET_ECHO = r"""
function protocol_input(buf)
    if buf:length() < 4 then
        return 0
    end
    local size = mix.php_unpack("N", buf:read(4))[1]
    if buf:length() < 4 + size then
        return 0
    end
    return 4 + size
end

function on_message(msg)
    mix.socket.tcp():send(msg)
end
"""


@pytest.fixture
async def start(tmp_path):
    """start(script, api=None, **server) -> Engine, with apiServer settings too."""
    engines: list[Engine] = []

    async def run(script: str, api: dict | None = None, **server) -> Engine:
        entry = tmp_path / f"entry{len(engines)}.lua"
        entry.write_text(textwrap.dedent(script))
        conf = engine_config(str(entry), **server)
        conf["engine"]["apiServer"].update(api or {})
        engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
        await engine.start()
        engines.append(engine)
        return engine

    yield run
    for engine in engines:
        await engine.stop()


async def open_raw(port: int, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), GUARD)
    except ConnectionResetError:
        return b""


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def lines_from(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def assert_ws_served(engine: Engine) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/ws") as ws:
            await ws.send_str("still here")
            assert (await ws.receive(timeout=GUARD)).data == "still here"


async def assert_api_served(engine: Engine) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{engine.api_port}/healthz") as resp:
            assert resp.status == 200


def port_of(engine: Engine, which: str) -> int:
    return engine.server_port() if which == "websocket" else engine.api_port


UNFINISHED_HEADS = {
    "nothing": b"",
    "half a request line": b"GET /ws HT",
    "half the headers": b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr",
}


# -- configuration ------------------------------------------------------------------------


def test_limit_keys_are_read_and_bad_values_name_the_key():
    conf = engine_config("entry.lua", maxConnections=5, handshakeTimeout=2.5, packetTimeout=3)
    conf["engine"]["apiServer"].update(maxConnections=7, handshakeTimeout=4, bodyTimeout=6)
    settings = parse_settings(conf)
    server, api = settings.servers[0], settings.api_server
    assert (server.max_connections, server.handshake_timeout, server.packet_timeout) == (5, 2.5, 3)
    assert (api.max_connections, api.handshake_timeout, api.body_timeout) == (7, 4, 6)
    defaults = parse_settings(engine_config("entry.lua"))
    assert (defaults.servers[0].max_connections, defaults.servers[0].handshake_timeout) == (0, 10)
    for key, value in (("maxConnections", -1), ("handshakeTimeout", 0), ("packetTimeout", "x")):
        bad = engine_config("entry.lua", **{key: value})
        with pytest.raises(ConfigError, match=rf"^engine\.servers\[0\]\.{key}: expected"):
            parse_settings(bad)
    bad = engine_config("entry.lua")
    bad["engine"]["apiServer"]["bodyTimeout"] = 0
    with pytest.raises(ConfigError, match=r"^engine\.apiServer\.bodyTimeout: expected"):
        parse_settings(bad)


# -- request heads and bodies ------------------------------------------------------------


@pytest.mark.parametrize("sent", list(UNFINISHED_HEADS), ids=list(UNFINISHED_HEADS))
@pytest.mark.parametrize("which", ["websocket", "api"])
async def test_an_unfinished_request_head_is_closed_after_handshake_timeout(start, which, sent):
    engine = await start(ECHO, api={"handshakeTimeout": 1}, handshakeTimeout=1)
    reader, writer = await open_raw(port_of(engine, which), UNFINISHED_HEADS[sent])
    assert await read_to_end(reader) == b""
    writer.close()
    await assert_ws_served(engine)
    await assert_api_served(engine)


async def test_a_request_body_that_does_not_arrive_gets_408_after_body_timeout(start, caplog):
    engine = await start(ECHO, api={"bodyTimeout": 1})
    head = (b"POST /v1/mesh/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
    with caplog.at_level(logging.WARNING, logger="connmix.http"):
        reader, writer = await open_raw(engine.api_port, head + b'{"ch')
        response = await read_to_end(reader)
    writer.close()
    if response:  # else the close overtook the reply: closed is what counts
        assert status_of(response) == 408
    [line] = lines_from(caplog, "connmix.http")
    assert "request body not received within 1s (408)" in line.getMessage()
    await assert_api_served(engine)


async def test_a_slow_but_complete_body_is_served(start):
    engine = await start(ECHO, api={"bodyTimeout": 5})
    body = b'{"channel":"nobody","data":"hi"}'
    head = (b"POST /v1/mesh/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    reader, writer = await open_raw(engine.api_port, head + body[:5])
    await asyncio.sleep(0.5)
    writer.write(body[5:])
    assert status_of(await read_to_end(reader)) == 200
    writer.close()


# -- oversized heads --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["websocket", "api"])
async def test_a_20kb_header_gets_431_and_one_log_line_without_traceback(start, which, caplog):
    engine = await start(ECHO)
    request = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    with caplog.at_level(logging.DEBUG):
        reader, writer = await open_raw(port_of(engine, which), request)
        response = await read_to_end(reader)
    writer.close()
    assert status_of(response) == 431
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.name == "connmix.http" and "(431)" in line.getMessage()
    assert line.exc_info is None and "\n" not in line.getMessage()
    await assert_ws_served(engine)
    await assert_api_served(engine)


# -- maxConnections ---------------------------------------------------------------------


async def test_websocket_max_connections_refuses_with_503_and_serves_again(start, caplog):
    engine = await start(ECHO, maxConnections=2)
    url = f"http://127.0.0.1:{engine.server_port()}/ws"
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(url)
        second = await session.ws_connect(url)
        with caplog.at_level(logging.WARNING, logger="connmix.http"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url)
        assert refused.value.status == 503
        [line] = lines_from(caplog, "connmix.http")
        assert "maxConnections 2 reached (503)" in line.getMessage()
        await second.send_str("served")
        assert (await second.receive(timeout=GUARD)).data == "served"
        await first.close()
        await until_served(lambda: assert_ws_served(engine))
        await second.close()


async def test_api_max_connections_refuses_with_503_and_serves_again(start, caplog):
    engine = await start(ECHO, api={"maxConnections": 2})
    held = [await open_raw(engine.api_port) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="connmix.http"):
        reader, writer = await open_raw(engine.api_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(await read_to_end(reader)) == 503
    writer.close()
    assert "maxConnections 2 reached (503)" in lines_from(caplog, "connmix.http")[0].getMessage()
    for _, held_writer in held:
        held_writer.close()
    await until_served(lambda: assert_api_served(engine))


async def test_socket_max_connections_closes_at_once_and_serves_again(start, caplog):
    engine = await start(SOCKET_ECHO, protocol="socket", maxConnections=1)
    port = engine.server_port()
    first = await TcpClient.connect(port)
    await first.send_packet(b"one")
    assert await first.recv_packet() == b"one"
    with caplog.at_level(logging.WARNING, logger="connmix.socket"):
        refused = await TcpClient.connect(port)
        await refused.assert_closed()
    [line] = lines_from(caplog, "connmix.socket")
    assert "maxConnections 1 reached" in line.getMessage()
    await first.send_packet(b"still")
    assert await first.recv_packet() == b"still"
    await first.close()

    async def served() -> None:
        again = await TcpClient.connect(port)
        await again.send_packet(b"again")
        assert await again.recv_packet() == b"again"
        await again.close()
    await until_served(served)


async def until_served(attempt) -> None:
    """A connection that left frees its place a moment later: retry until then."""
    deadline = time.monotonic() + GUARD
    while True:
        try:
            return await attempt()
        except (aiohttp.ClientError, AssertionError, ConnectionError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- socket servers -----------------------------------------------------------------------


async def test_a_socket_client_that_never_sends_is_closed_by_read_timeout(start):
    engine = await start(SOCKET_ECHO, protocol="socket", readTimeout=1)
    silent = await TcpClient.connect(engine.server_port())
    await silent.assert_closed()


async def test_a_socket_packet_that_never_completes_is_closed_after_packet_timeout(start, caplog):
    engine = await start(SOCKET_ECHO, protocol="socket", packetTimeout=1)
    port = engine.server_port()
    trickler = await TcpClient.connect(port)
    with caplog.at_level(logging.WARNING, logger="connmix.socket"):
        await trickler.send(packet(b"x" * 100)[:10])
        for _ in range(GUARD * 4):  # a byte every 0.25 s: never idle for readTimeout
            await asyncio.sleep(0.25)
            try:
                await trickler.send(b"x")
            except ConnectionError:
                break
            if trickler.reader.at_eof():
                break
        assert await read_to_end(trickler.reader) == b""  # closed (or reset: we kept sending)
    assert "packet timeout" in "\n".join(r.getMessage() for r in lines_from(caplog, "connmix.socket"))
    other = await TcpClient.connect(port)
    await other.send_packet(b"other")
    assert await other.recv_packet() == b"other"


async def test_a_packet_trickled_in_small_pieces_arrives_whole(start):
    engine = await start(SOCKET_ECHO, protocol="socket")
    body = os.urandom(200_000)
    client = await TcpClient.connect(engine.server_port())
    wire = packet(body) + packet(b"next")
    for i in range(0, len(wire), 512):
        await client.send(wire[i:i + 512])
    assert await client.recv_packet() == body
    assert await client.recv_packet() == b"next"


async def test_a_packet_split_by_a_hot_update_arrives_whole(start):
    engine = await start(SOCKET_ECHO, protocol="socket")
    client = await TcpClient.connect(engine.server_port())
    wire = packet(b"before and after the update")
    await client.send(wire[:10])
    await client.assert_silent()  # the first half is held, unframed
    engine.vms[0].load()  # a hot update: a new Lua state, without that half
    await client.send(wire[10:])
    assert await client.recv_packet() == b"before and after the update"


# -- file descriptors -------------------------------------------------------------------


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit_at_start(tmp_path):
    soft, hard = 64, 256
    engine = _start_subprocess(tmp_path, soft, hard)
    try:
        assert f"open files limit: {hard}" in _read_until(engine, "api server on")
    finally:
        _stop(engine)


# `connmix dev` runs on uvloop, whose accept drops connections when out of
# descriptors without telling; plain asyncio reports each failing accept.
LOOPS = {
    "uvloop": ["-m", "connmix_py", "dev", "-f"],
    "asyncio": ["-c", "import asyncio, sys; from connmix_py import cli, logs; logs.setup_console(); "
                "sys.exit(asyncio.run(cli.serve(sys.argv[1], 'dev')))"],
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_running_out_of_descriptors_is_logged_a_few_times_and_the_port_serves_again(tmp_path, loop):
    limit = 64
    engine = _start_subprocess(tmp_path, limit, limit, LOOPS[loop])
    held: list[socket.socket] = []
    try:
        log = _read_until(engine, "api server on")
        port = int(log.split("websocket server on 127.0.0.1:")[1].split("/")[0])
        started = time.monotonic()
        for _ in range(limit + 20):  # more than the engine can hold
            held.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(3)
        for sock in held:
            sock.close()
        held.clear()
        reply = _http_get(port, "/ws")  # served again
        assert reply.startswith(b"HTTP/1.1 400"), reply
        elapsed = time.monotonic() - started
        log = _read_available(engine)
        lines = [line for line in log.splitlines() if "connmix.limits" in line]
        assert 1 <= len(lines) <= elapsed + 3, lines
        expected = {"uvloop": f"open files nearly exhausted: a connection on 127.0.0.1:{port} got",
                    "asyncio": f"cannot accept connections on 127.0.0.1:{port}: Too many open files "
                               f"(EMFILE, open files limit 64)"}[loop]
        assert any(expected in line for line in lines), lines
        assert "Traceback" not in log
    finally:
        for sock in held:
            sock.close()
        _stop(engine)


def _start_subprocess(tmp_path, soft: int, hard: int, command: list[str] = LOOPS["uvloop"]
                      ) -> subprocess.Popen:
    (tmp_path / "entry.lua").write_text(textwrap.dedent(ECHO))
    conf = engine_config(str(tmp_path / "entry.lua"), handshakeTimeout=30)
    (tmp_path / "connmix.yaml").write_text(yaml.safe_dump(conf))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, *command, str(tmp_path / "connmix.yaml")],
        cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": root},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    os.set_blocking(proc.stderr.fileno(), False)
    return proc


def _read_available(proc: subprocess.Popen) -> str:
    try:
        return os.read(proc.stderr.fileno(), 1 << 20).decode(errors="replace")
    except BlockingIOError:
        return ""


def _read_until(proc: subprocess.Popen, marker: str) -> str:
    text, deadline = "", time.monotonic() + 30
    while marker not in text:
        assert proc.poll() is None, text + _read_available(proc)
        assert time.monotonic() < deadline, text
        text += _read_available(proc)
        time.sleep(0.05)
    return text


def _http_get(port: int, path: str) -> bytes:
    deadline = time.monotonic() + GUARD
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                return sock.recv(4096)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(GUARD)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
