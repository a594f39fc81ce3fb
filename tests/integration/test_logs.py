"""Logs (issue 11): every connection's life and every API request at debug
level, each connection's lines carrying its client id and address; mix.log
naming the script and line; logging.filename rotated daily keeping maxFiles
files, as text or JSON lines, from the commands and from an embedding program."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import socket
import struct
import sys
import textwrap
import time

import aiohttp
import pytest

from connmix_py import Engine, logs, parse_settings
from tests.conftest import engine_config
from tests.integration.test_cli import write_config
from tests.raw_websocket import RawWebSocket
from tests.waiting import until, within

SCRIPT = """
function on_handshake(client_id, headers, server)
    if headers["X-Refuse"] then
        return false
    end
end

function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "auth" then
        conn:set_context_value("uid", "1001")
        conn:subscribe("user:1001")
        conn:send(conn:client_id())
    end
end
"""


def lines_of(caplog, client_id: str) -> list[str]:
    """The messages of one connection's records, checked to carry its id as an extra."""
    found = [r for r in caplog.records if getattr(r, "client_id", None) == client_id]
    for record in found:
        assert record.getMessage().startswith(f"client {client_id} (127.0.0.1:")
        assert record.remote.startswith("127.0.0.1:")
    return [r.getMessage().split("): ", 1)[1] for r in found]


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def api_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "connmix.api"]


async def test_a_websocket_flow_logs_its_life_and_the_api_requests(start_engine, session, caplog):
    caplog.set_level(logging.DEBUG, logger="connmix")
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("auth")
    client_id = (await ws.receive(timeout=10)).data
    secret = "s3cr3t-password"
    async with session.post(running.api_url + "/v1/mesh/publish?token=query-secret",
                            json={"c": "user:1001", "d": "body-secret"},
                            headers={"Authorization": basic_auth("backend", secret)}) as resp:
        assert resp.status == 200
    assert (await ws.receive(timeout=10)).data == "body-secret"
    await ws.close(code=1000)
    await until(lambda: any("closed" in line for line in lines_of(caplog, client_id)), "the close was logged")

    life = lines_of(caplog, client_id)
    assert life[0].startswith(f"accepted on port {running.engine.server_port()}, GET /ws")
    assert life[1:] == ["handshake accepted", "closed: code 1000, clean"]
    [request] = api_lines(caplog)
    assert request.startswith("api: POST /v1/mesh/publish 200 ")
    assert "user backend from 127.0.0.1" in request
    assert secret not in caplog.text
    assert "query-secret" not in caplog.text and "body-secret" not in caplog.text


async def test_a_refused_handshake_and_a_refused_api_request_are_logged(start_engine, session, caplog):
    caplog.set_level(logging.DEBUG, logger="connmix")
    running = await start_engine(SCRIPT)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await running.connect(headers={"X-Refuse": "1"})
    [record] = [r for r in caplog.records if "handshake refused" in r.getMessage()]
    assert record.getMessage().endswith("handshake refused: 403 by on_handshake")
    assert record.client_id
    async with session.get(running.api_url + "/no/such/route") as resp:
        assert resp.status == 404
    assert api_lines(caplog)[-1].startswith("api: GET /no/such/route 404 ")


async def test_a_read_timeout_is_logged_with_its_close_code(start_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="connmix")
    running = await start_engine(SCRIPT, readTimeout=1)
    ws = await running.connect()
    await ws.send_str("auth")
    client_id = (await ws.receive(timeout=10)).data
    assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
    await until(lambda: any("closed" in line for line in lines_of(caplog, client_id)), "the close was logged")
    assert lines_of(caplog, client_id)[-2:] == [
        "closing: read timeout: nothing received for 1s",
        "closed: code 1008, read timeout: nothing received for 1s"]


async def test_a_slow_client_is_logged_as_dropped_without_a_close(start_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="connmix")
    running = await start_engine(SCRIPT, maxSendQueue=64 * 1024, writeTimeout=30)
    client = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=4096)
    await client.send_text("auth")
    client_id = (await client.read_frame())[1].decode()
    frame = b"x" * 32 * 1024
    async with within(30, "the slow client was dropped"):
        while await running.engine.publish("user:1001", frame) == (1, 0):
            await asyncio.sleep(0)
    await until(lambda: any("closed" in line for line in lines_of(caplog, client_id)), "the close was logged")
    life = lines_of(caplog, client_id)
    assert life[-2] == "closing: slow client: send queue over 65536 bytes"
    assert life[-1] == "closed: code 1006, slow client: send queue over 65536 bytes"
    client.drop()


SOCKET_SCRIPT = """
function protocol_input(buf) return 0 end
function on_message(msg) end
"""


async def socket_connection(start_engine, caplog):
    """A socket server and one client of it, its accept logged: (running, client writer)."""
    caplog.set_level(logging.DEBUG, logger="connmix")
    running = await start_engine(SOCKET_SCRIPT, protocol="socket")
    _, writer = await asyncio.open_connection("127.0.0.1", running.engine.server_port())
    await until(lambda: any("accepted" in r.getMessage() for r in caplog.records), "the accept was logged")
    return running, writer


def only_connection_lines(caplog) -> list[str]:
    [client_id] = {r.client_id for r in caplog.records if hasattr(r, "client_id")}
    return lines_of(caplog, client_id)


async def test_socket_connections_are_logged_too(start_engine, caplog):
    running, writer = await socket_connection(start_engine, caplog)
    writer.close()
    await until(lambda: any("closed" in r.getMessage() for r in caplog.records), "the close was logged")
    assert only_connection_lines(caplog) == [f"accepted on port {running.engine.server_port()}",
                                             "closed: code 1000, clean"]


async def test_a_socket_client_lost_without_eof_is_logged_with_1006(start_engine, caplog):
    _, writer = await socket_connection(start_engine, caplog)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
    writer.transport.abort()
    await until(lambda: any("closed" in r.getMessage() for r in caplog.records), "the close was logged")
    assert only_connection_lines(caplog)[-1].startswith("closed: code 1006, connection lost: ")


async def test_mix_log_names_the_script_and_line(start_engine, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="connmix")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "audit.lua").write_text(textwrap.dedent("""\
        local M = {}
        function M.note(text)
            mix.log(mix.INFO, "audit " .. text)
        end
        return M
    """))
    running = await start_engine("""\
        local audit = require("helpers.audit")
        function on_message(msg)
            mix_log(mix_WARN, "got " .. msg.data)
            pcall(mix.log, mix.ERROR, "through pcall")
            audit.note(msg.data)
            coroutine.wrap(function() mix.log(mix.INFO, "in a coroutine") end)()
            mix.websocket():send("ok")
        end
    """)
    ws = await running.connect()
    await ws.send_str("hello")
    assert (await ws.receive(timeout=10)).data == "ok"
    entry = running.engine.settings.servers[0].entry.rsplit("/", 1)[1]
    lua = [(r.getMessage(), r.script, r.line) for r in caplog.records if r.name == "connmix.lua"]
    assert lua == [(f"[{entry}:3] got hello", entry, 3),
                   (f"[{entry}:4] through pcall", entry, 4),
                   ("[helpers/audit.lua:3] audit hello", "helpers/audit.lua", 3),
                   (f"[{entry}:6] in a coroutine", entry, 6)]


# -- the log file --------------------------------------------------------------------


def settings_with_log(tmp_path, **logging_keys):
    entry = tmp_path / "entry.lua"
    entry.write_text(SCRIPT)
    conf = engine_config(str(entry))
    conf["logging"] = {"filename": "logs/connmix.log", **logging_keys}
    return parse_settings(conf, base_dir=str(tmp_path))


@pytest.fixture
def log_file():
    """logs.configure(settings) for a test; its handler removed afterwards."""
    added: list[logging.Handler] = []

    def configure(settings, *args):
        handler = logs.configure(settings, *args)
        added.append(handler)
        return handler

    yield configure
    for handler in added:
        for name in ("connmix", ""):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    logging.getLogger("connmix").setLevel(logging.NOTSET)


async def test_an_embedding_program_gets_json_lines_in_the_file(tmp_path, session, log_file):
    settings = settings_with_log(tmp_path, format="json", level="debug")
    log_file(settings)
    engine = Engine(settings)
    await engine.start()
    try:
        ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/ws")
        await ws.send_str("auth")
        client_id = (await ws.receive(timeout=10)).data
        await ws.close()
    finally:
        await engine.stop()
    path = tmp_path / "logs" / "connmix.log"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    mine = [line for line in lines if line.get("client_id") == client_id]
    assert [line["message"].split("): ", 1)[1] for line in mine][1:] == [
        "handshake accepted", "closed: code 1000, clean"]
    assert mine[0]["level"] == "DEBUG" and mine[0]["logger"] == "connmix.websocket"
    assert mine[0]["remote"].startswith("127.0.0.1:")
    assert mine[0]["time"].endswith("+00:00")


def test_the_yaml_level_filters_the_file(tmp_path, log_file):
    log_file(settings_with_log(tmp_path, level="warn"))
    logging.getLogger("connmix.test").info("left out")
    logging.getLogger("connmix.test").warning("kept")
    text = (tmp_path / "logs" / "connmix.log").read_text()
    assert "kept" in text and "left out" not in text
    assert " WARNING connmix.test: kept" in text


def test_daily_rotation_keeps_max_files(tmp_path, log_file):
    handler = log_file(settings_with_log(tmp_path, maxFiles=2))
    logger = logging.getLogger("connmix.test")
    day = 24 * 3600
    # Each midnight passed: the next line rotates the file to that day's name.
    for days_ago in (5, 4, 3, 2):
        handler.rolloverAt = int(time.time()) - days_ago * day
        logger.warning("line after %d", days_ago)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names[0] == "connmix.log"  # today's, then maxFiles old ones: the newest days
    assert [name.rsplit(".", 1)[1] for name in names[1:]] == [
        time.strftime("%Y-%m-%d", time.localtime(time.time() - days_ago * day)) for days_ago in (4, 3)]
    assert "line after 2" in (tmp_path / "logs" / "connmix.log").read_text()


def test_a_second_configure_replaces_the_file_handler(tmp_path, log_file):
    log_file(settings_with_log(tmp_path))
    second = log_file(settings_with_log(tmp_path, format="json"))
    ours = [h for h in logging.getLogger("connmix").handlers if isinstance(h, type(second))]
    assert ours == [second]


async def websocket_port(proc) -> int:
    """Read the engine's JSON console lines until it names its websocket port."""
    async with within(30, "the engine logged its websocket port"):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the engine exited"
            message = json.loads(line)["message"]
            if message.startswith("websocket server on "):  # ... on 127.0.0.1:PORT/path, entry ...
                return int(message.split(",")[0].rsplit(":", 1)[1].split("/")[0])


async def test_dev_writes_json_lines_to_the_console_and_the_file(tmp_path):
    config = write_config(tmp_path, top="logging: {filename: logs/out.log, format: json}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "dev", "-f", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        port = await websocket_port(proc)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/")
            await ws.close()
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0
    console = [json.loads(line) for line in rest.decode().splitlines()]
    written = [json.loads(line) for line in (tmp_path / "logs" / "out.log").read_text().splitlines()]
    for lines in (console, written):
        assert any(line["message"].endswith("closed: code 1000, clean") and line["level"] == "DEBUG"
                   for line in lines)
