"""The websocket server's behaviour at its edges: paths, upgrades,
on_handshake's verdict and arguments, frame size, timeouts, and on_close."""
from __future__ import annotations

import asyncio
import gc
import logging
import os

import aiohttp
import orjson
import pytest

from tests.helpers import assert_silent, receive_json
from tests.raw_websocket import RawWebSocket
from tests.waiting import until

SCRIPT = """
function on_handshake(client_id, headers, server)
    if headers["X-Refuse"] then
        return false
    end
    if headers["X-Show"] then
        mix.websocket():send(mix.json_encode({headers = headers, server = server}))
    end
end

function on_message(msg)
    local conn = mix.websocket()
    local data = msg.data
    if data == "watch" then
        conn:subscribe("events")
        conn:send("watching")
    elseif data == "id" then
        conn:send(conn:client_id())
    elseif data == "news" then
        conn:subscribe("news")
        conn:send(conn:client_id())
    elseif data == "close" then
        conn:close()
    elseif data == "boom" then
        error("boom")
    elseif data == "wait" then
        conn:wait_context_value("never", 2)
        conn:send("waited")
    else
        conn:send("echo " .. #data)
    end
end

function on_close(client_id, err)
    mix.mesh.publish("events", mix.json_encode({closed = client_id, err = tostring(err)}))
end
"""


async def start(start_engine, **settings):
    return await start_engine(SCRIPT, **settings)


async def assert_served(running) -> None:
    """A new connection is accepted and answered."""
    ws = await running.connect()
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "echo 5"
    await ws.close()


async def watcher(running) -> aiohttp.ClientWebSocketResponse:
    ws = await running.connect()
    await ws.send_str("watch")
    assert (await ws.receive(timeout=5)).data == "watching"
    return ws


async def client_id(ws) -> str:
    await ws.send_str("id")
    return (await ws.receive(timeout=5)).data


# -- the upgrade -----------------------------------------------------------------


async def test_wrong_path_is_404(start_engine, session):
    running = await start(start_engine)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(running.ws_url + "/elsewhere")
    assert refused.value.status == 404
    await assert_served(running)


async def test_plain_http_without_upgrade_is_400(start_engine, session):
    running = await start(start_engine)
    async with session.get(running.ws_url) as resp:
        assert resp.status == 400
        assert "websocket" in await resp.text()
    await assert_served(running)


async def test_broken_websocket_handshake_is_400(start_engine):
    running = await start(start_engine)
    raw = await RawWebSocket.open(running.engine.server_port())
    request = (f"GET {running.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")  # no key
    await raw.loop.sock_sendall(raw.sock, request.encode())
    head = await asyncio.wait_for(raw.loop.sock_recv(raw.sock, 4096), 5)
    assert head.startswith(b"HTTP/1.1 400")
    raw.drop()
    assert running.engine.stats()["connections"] == 0
    await assert_served(running)


async def test_on_handshake_false_is_403_and_nothing_accepts(start_engine):
    running = await start(start_engine)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await running.connect(headers={"X-Refuse": "yes"})
    assert refused.value.status == 403
    await assert_served(running)  # on_handshake returned nothing: accepted


async def test_on_handshake_gets_headers_and_server(start_engine):
    running = await start(start_engine)
    ws = await running.connect(headers={"X-Show": "1", "x-token": "abc"})
    shown = await receive_json(ws)
    headers, server = shown["headers"], shown["server"]
    # Go's canonical header names, as CONNMIX scripts read them.
    assert headers["X-Token"] == "abc"
    assert headers["Upgrade"] == "websocket"
    assert "Sec-Websocket-Key" in headers
    port = running.engine.server_port()
    assert server["Method"] == "GET"
    assert server["RequestUri"] == running.path
    assert server["ServerProtocol"] == "HTTP/1.1"
    assert server["Host"] == f"127.0.0.1:{port}"
    host, _, client_port = server["RemoteAddr"].rpartition(":")
    assert host == "127.0.0.1" and client_port.isdigit()


async def test_request_uri_keeps_the_query(start_engine, session):
    running = await start(start_engine)
    ws = await session.ws_connect(running.ws_url + "?token=a%20b&x=1", headers={"X-Show": "1"})
    assert (await receive_json(ws))["server"]["RequestUri"] == running.path + "?token=a%20b&x=1"


async def test_on_handshake_gets_the_same_tables_from_a_plain_head_and_an_unusual_one(start_engine):
    """A plain head is read by lean_head.py, one with a percent-encoded query and
    a UTF-8 header value by aiohttp's parser: the script sees the same tables."""
    running = await start(start_engine)
    port = running.engine.server_port()
    shown = []
    for path, extra in ((running.path, {}), (running.path + "?t=a%20b", {"X-Name": "caf\u00e9"})):
        raw = await RawWebSocket.open(port)
        assert (await raw.handshake(path, {"X-Show": "1", "x-token": "abc", **extra}))[0] == 101
        opcode, payload = await raw.read_frame()
        tables = orjson.loads(payload)
        for name in ("Sec-Websocket-Key", "X-Name"):
            tables["headers"].pop(name, None)
        assert tables["server"].pop("RequestUri") == path
        tables["server"].pop("RemoteAddr")
        shown.append(tables)
        raw.drop()
    assert shown[0] == shown[1]
    assert shown[0]["headers"]["X-Token"] == "abc" and shown[0]["server"]["ServerProtocol"] == "HTTP/1.1"


# -- frames and timeouts ---------------------------------------------------------------


async def test_frame_over_max_message_size_closes_with_1009(start_engine, caplog):
    running = await start(start_engine, maxMessageSize=1024)
    other = await running.connect()
    ws = await running.connect()
    await ws.send_str("x" * 1024)  # at the limit: fine
    assert (await ws.receive(timeout=5)).data == "echo 1024"
    with caplog.at_level(logging.WARNING, logger="connmix.websocket"):
        await ws.send_str("x" * 1025)
        msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    assert any("message too big" in r.getMessage() for r in caplog.records)
    await other.send_str("still")
    assert (await other.receive(timeout=5)).data == "echo 5"


async def keep_pinging(ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        await ws.ping()
        await asyncio.sleep(0.3)


async def test_read_timeout_closes_an_idle_client(start_engine):
    running = await start(start_engine, readTimeout=1)
    events = await watcher(running)
    pinger = asyncio.create_task(keep_pinging(events))  # pings count as frames read
    try:
        idle = await running.connect()
        idle_id = await client_id(idle)
        msg = await idle.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        event = await closed_event(events, idle_id)
        assert event["err"].startswith("read timeout")
    finally:
        pinger.cancel()
    await assert_served(running)


async def test_pings_keep_a_client_alive(start_engine):
    running = await start(start_engine, readTimeout=1)
    ws = await running.connect(autoping=True)
    for _ in range(6):  # 2.4 s of pings, no data frames
        await ws.ping()
        await asyncio.sleep(0.4)
    await ws.send_str("alive?")
    assert (await ws.receive(timeout=5)).data == "echo 6"


async def test_ping_frame_gets_a_pong_with_its_payload(start_engine):
    running = await start(start_engine)
    ws = await running.connect(autoping=False)
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")


async def test_a_long_callback_is_not_an_idle_client(start_engine):
    running = await start(start_engine, readTimeout=1)
    ws = await running.connect()
    await ws.send_str("wait")  # the callback waits 2 s, longer than readTimeout
    assert (await ws.receive(timeout=5)).data == "waited"


# -- on_close --------------------------------------------------------------------------


async def closed_event(events, cid: str) -> dict:
    event = await receive_json(events)
    assert event["closed"] == cid
    await assert_silent(events)  # exactly once
    return event


async def test_on_close_err_is_nil_on_a_clean_client_close(start_engine):
    running = await start(start_engine)
    events = await watcher(running)
    ws = await running.connect()
    cid = await client_id(ws)
    await ws.close()
    assert (await closed_event(events, cid))["err"] == "nil"
    assert running.engine.stats()["connections"] == 1


async def test_on_close_err_is_nil_when_the_script_closes(start_engine):
    running = await start(start_engine)
    events = await watcher(running)
    ws = await running.connect()
    cid = await client_id(ws)
    await ws.send_str("close")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1000)
    assert (await closed_event(events, cid))["err"] == "nil"


async def test_on_close_err_is_a_string_when_the_client_drops(start_engine):
    running = await start(start_engine)
    events = await watcher(running)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_text("id")
    _, cid = await raw.read_frame()
    raw.drop()
    assert (await closed_event(events, cid.decode()))["err"].startswith("connection lost")
    await assert_served(running)


async def test_on_close_err_is_the_lua_error(start_engine):
    running = await start(start_engine)
    events = await watcher(running)
    ws = await running.connect()
    cid = await client_id(ws)
    await ws.send_str("boom")
    assert (await ws.receive(timeout=5)).data == 1011
    err = (await closed_event(events, cid))["err"]
    assert err == "lua error"  # short: the whole error (path, message) is in the log only


# -- slow clients ---------------------------------------------------------------------
# A raw socket with a tiny receive buffer that stops reading after its
# subscription is confirmed: the server's writes back up at once.

PAYLOAD_SIZE = 10 * 1024
FRAME_SIZE = PAYLOAD_SIZE + 4  # text frame header with a 16-bit length


def numbered(i: int) -> bytes:
    return b"%06d" % i + b"x" * (PAYLOAD_SIZE - 6)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def non_reading_subscriber(running) -> tuple[RawWebSocket, str]:
    slow = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=4096)
    await slow.send_text("news")
    _, cid = await slow.read_frame()
    return slow, cid.decode()


async def test_a_client_that_never_reads_is_closed_and_others_get_everything(start_engine):
    queue_limit = 256 * 1024
    running = await start(start_engine, maxSendQueue=queue_limit, writeTimeout=2)
    engine = running.engine
    events = await watcher(running)
    slow, slow_id = await non_reading_subscriber(running)
    reader = await running.connect()
    await reader.send_str("news")
    await reader.receive(timeout=5)
    slow_conn = engine.hub.get(slow_id)
    transport = slow_conn.transport
    gc.collect()
    rss_before = rss_bytes()
    peak_queued = 0
    for i in range(1000):  # 10 MB, one publish at a time, read by the reader as it goes
        await engine.publish("news", numbered(i))
        peak_queued = max(peak_queued, transport.get_write_buffer_size())
        msg = await reader.receive(timeout=5)
        assert msg.data.encode() == numbered(i)
    gc.collect()
    rss_growth = rss_bytes() - rss_before

    assert slow_conn.closing and slow_conn.close_err.startswith("slow client: send queue over")
    assert peak_queued <= queue_limit + FRAME_SIZE
    assert transport.get_write_buffer_size() == 0  # the aborted connection's buffer is released
    assert rss_growth < 5 * 1024 * 1024, f"memory grew by {rss_growth} bytes"
    event = await closed_event(events, slow_id)
    assert event["err"].startswith("slow client")
    await until(lambda: engine.hub.get(slow_id) is None, "the slow client left the hub")
    assert engine.stats()["connections"] == 2  # the watcher and the reader
    slow.drop()
    await reader.send_str("still")
    assert (await reader.receive(timeout=5)).data == "echo 5"


async def test_a_blocked_send_past_write_timeout_closes_the_client(start_engine):
    running = await start(start_engine, maxSendQueue=64 * 1024 * 1024, writeTimeout=1)
    events = await watcher(running)
    slow, slow_id = await non_reading_subscriber(running)
    for i in range(800):  # 8 MB: more than the kernel buffers hold
        await running.engine.publish("news", numbered(i))
    event = await closed_event(events, slow_id)  # within about writeTimeout + 1 s
    assert event["err"] == "slow client: a send stayed blocked over 1s"
    slow.drop()
    await assert_served(running)


async def test_closing_a_client_that_never_reads_does_not_hang(start_engine):
    running = await start(start_engine, maxSendQueue=64 * 1024 * 1024, writeTimeout=1)
    events = await watcher(running)
    slow, slow_id = await non_reading_subscriber(running)
    for i in range(800):
        await running.engine.publish("news", numbered(i))
    await slow.send_text("close")  # conn:close() waits for a flush that never comes
    event = await closed_event(events, slow_id)
    assert event["err"].startswith("slow client")
    slow.drop()
    await assert_served(running)


# -- clients that leave early, and shutdown -----------------------------------------------


async def test_client_leaving_during_a_waiting_on_handshake(start_engine, caplog):
    script = """
    function on_handshake(client_id, headers, server)
        mix.websocket():wait_context_value("never", 0.5)
    end
    function on_message(msg)
        mix.websocket():send("echo " .. #msg.data)
    end
    """
    running = await start_engine(script)
    raw = await RawWebSocket.open(running.engine.server_port())
    request = (f"GET {running.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with caplog.at_level(logging.ERROR):
        await raw.loop.sock_sendall(raw.sock, request.encode())
        raw.drop()
        # the handshake ends after 0.5 s
        await until(lambda: running.engine.stats()["connections"] == 0, "the dropped handshake left")
        await assert_served(running)
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_a_waiting_on_handshake_accepts_and_the_client_is_served(start_engine):
    """on_handshake usually returns at once (no task is made for it); one that
    waits finishes on the event loop and its connection opens all the same."""
    script = """
    function on_handshake(client_id, headers, server)
        mix.websocket():wait_context_value("never", 0.2)
        return not server.RequestUri:find("refuse", 1, true)
    end
    function on_message(msg)
        mix.websocket():send("echo " .. msg.data)
    end
    """
    running = await start_engine(script)
    ws = await running.connect()
    await ws.send_str("after a wait")
    assert (await ws.receive(timeout=5)).data == "echo after a wait"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await running.session.ws_connect(running.ws_url + "?refuse")
    assert refused.value.status == 403


async def test_stop_closes_clients_with_1001(start_engine):
    running = await start(start_engine)
    ws = await running.connect()
    await ws.send_str("x")
    await ws.receive(timeout=5)
    closed = asyncio.ensure_future(ws.receive(timeout=5))  # reading, the client answers the close
    await running.engine.stop()
    msg = await closed
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
