"""The socket server (protocol: socket) through real TCP clients: framing by
protocol_input, decode/on_message order, protocol_encode on every way out
the engine sends for the script (conn:send writes the script's bytes as given),
the old calling style, mix.buffer, clear_buffer, and the bounds and bad
script answers, each with proof that other connections are still served."""
from __future__ import annotations

import asyncio
import logging
import textwrap

import pytest
import yaml

from connmix_py import Engine, parse_settings
from connmix_py.config import ConfigError
from tests.helpers import receive_json
from tests.tcp_client import TcpClient
from tests.waiting import until, within

# Newline framing written inline, plus commands that exercise the engine.
# "return <expr>" lines make protocol_input return <expr> (bad values).
SCRIPT = r"""
encodes = 0

function on_connect(client_id, c)
    c:set_context_value("old_style", tostring(c == conn and c:client_id() == client_id))
end

function protocol_input(buf, c)
    local data = buf:tostring()
    local stop = data:find("\n", 1, true)
    if not stop then
        return 0
    end
    local line = data:sub(1, stop - 1)
    if line:sub(1, 7) == "return " then
        return loadstring(line)()
    end
    if line == "hang-up" then
        return -1
    end
    if line == "clear-in-input" then
        c:clear_buffer()
        return stop
    end
    return stop
end

function protocol_decode(str, c)
    local line = str:sub(1, -2)
    if line == "skip" then
        return nil
    end
    if line == "decode-boom" then
        error("decode boom") -- DECODE BOOM
    end
    return { line = line, seen = c:context_value("seen") }
end

function protocol_encode(str, c)
    encodes = encodes + 1
    if str == "encode-table" then
        return {}
    elseif str == "encode-empty" then
        return ""
    elseif str == "encode-boom" then
        error("encode boom")
    elseif str == "encode-wait" then
        mix.http.request("GET", "http://127.0.0.1:1/")
    elseif str == "encode-yield" then
        coroutine.yield()
    end
    return str .. "\n"
end

-- conn:send writes its bytes as given: the script frames its own replies.
local function say(c, s)
    return c:send(s .. "\n")
end

local function words(line)
    local out = {}
    for w in line:gmatch("%S+") do
        out[#out + 1] = w
    end
    return out
end

function on_message(msg, c)
    local conn = mix.socket.tcp()
    local w = words(msg.line)
    local cmd = w[1]
    if cmd == "id" then
        say(conn, conn:client_id())
    elseif cmd == "old" then
        say(conn, conn:context_value("old_style") .. " " .. tostring(c == conn) .. " "
            .. tostring(mix.websocket() == conn))
    elseif cmd == "set" then
        conn:set_context_value("seen", w[2])
    elseif cmd == "slow-set" then
        conn:wait_context_value("never", 0.3)
        conn:set_context_value("seen", w[2])
    elseif cmd == "seen" then
        say(conn, "seen " .. tostring(msg.seen))
    elseif cmd == "wait" then
        conn:wait_context_value("never", tonumber(w[2]) or 0.3)
        say(conn, "waited")
    elseif cmd == "sub" then
        conn:subscribe(w[2])
        say(conn, "subscribed")
    elseif cmd == "pub" then
        local s, f = mix.mesh.publish(w[2], w[3])
        say(conn, "published " .. s .. " " .. f)
    elseif cmd == "encodes" then
        say(conn, "encodes " .. encodes)
    elseif cmd == "send" then
        say(conn, "err " .. tostring(mix.mesh.send(conn:client_id(), w[2])))
    elseif cmd == "raw" then
        conn:send(w[2])
    elseif cmd == "boom" then
        error("boom") -- BOOM
    elseif cmd == "bye" then
        say(conn, "bye")
        conn:close()
    elseif cmd == "mem" then
        collectgarbage()
        say(conn, tostring(math.floor(collectgarbage("count"))))
    elseif cmd == "clear" then
        conn:clear_buffer()
        say(conn, "cleared")
    else
        say(conn, "echo " .. msg.line)
    end
end

function on_close(client_id, err, c)
    mix.mesh.publish("events", "closed " .. client_id .. " " .. tostring(err) .. " "
        .. tostring(c ~= nil and c:client_id() == client_id))
end
"""


def line_of(marker: str) -> int:
    for number, line in enumerate(textwrap.dedent(SCRIPT).splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(marker)


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT, protocol="socket", maxPacketSize=64)


async def client(running) -> TcpClient:
    return await TcpClient.connect(running.engine.server_port())


async def ask(conn: TcpClient, line: str) -> str:
    await conn.send_line(line)
    return await conn.recv_line()


async def watcher(running) -> TcpClient:
    events = await client(running)
    assert await ask(events, "sub events") == "subscribed"
    return events


async def closed_event(events: TcpClient, client_id: str) -> str:
    """on_close's err (and whether it got the conn) for client_id."""
    prefix = f"closed {client_id} "
    async with within(10, f"on_close of client {client_id}"):
        while True:
            line = await events.recv_line()
            if line.startswith(prefix):
                return line[len(prefix):]


async def assert_served(running) -> None:
    other = await client(running)
    assert await ask(other, "still here") == "echo still here"
    await other.close()


def logged(caplog, level=logging.WARNING) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= level)


# -- configuration ----------------------------------------------------------------


def test_socket_protocol_and_max_packet_size_are_accepted():
    conf = yaml.safe_load("""
engine:
  servers:
    - {port: 7000, protocol: socket, entry: lua/entry.socket.lua, maxPacketSize: 4096}
""")
    server = parse_settings(conf).servers[0]
    assert (server.protocol, server.max_packet_size) == ("socket", 4096)
    conf["engine"]["servers"][0]["maxPacketSize"] = 0
    with pytest.raises(ConfigError, match=r"engine.servers\[0\].maxPacketSize"):
        parse_settings(conf)


# -- framing and order -----------------------------------------------------------


async def test_packets_in_one_write_are_each_framed_and_handled_in_order(running):
    conn = await client(running)
    await conn.send(b"one\ntwo\nthree\npart")
    assert [await conn.recv_line() for _ in range(3)] == ["echo one", "echo two", "echo three"]
    await conn.assert_silent()  # "part" waits for the rest of its packet
    await conn.send(b"ial\n")
    assert await conn.recv_line() == "echo partial"


async def test_a_packet_sent_byte_by_byte_is_framed_once_complete(running):
    conn = await client(running)
    for byte in b"slow\n":
        await conn.send(bytes([byte]))
        await asyncio.sleep(0.01)
    assert await conn.recv_line() == "echo slow"


async def test_decode_of_a_packet_sees_what_on_message_of_the_previous_did(running):
    """Sent together: slow-set waits before it sets; seen is decoded after it."""
    conn = await client(running)
    await conn.send(b"slow-set v1\nseen\nset v2\nseen\n")
    assert await conn.recv_line() == "seen v1"
    assert await conn.recv_line() == "seen v2"


async def test_a_waiting_callback_does_not_hold_up_other_connections(running):
    waiting = await client(running)
    await waiting.send_line("wait 2")
    other = await client(running)
    assert await ask(other, "quick") == "echo quick"
    assert await waiting.recv_line() == "waited"


async def test_input_behind_a_waiting_callback_beyond_max_packet_size_is_kept(running):
    """Complete packets queued behind a wait are not 'unframed': reading
    pauses and they are all handled afterwards, in order."""
    conn = await client(running)
    lines = [f"n{i:03}" for i in range(100)]  # 500 bytes, maxPacketSize is 64
    await conn.send(b"wait 0.3\n" + "".join(f"{line}\n" for line in lines).encode())
    assert await conn.recv_line() == "waited"
    assert [await conn.recv_line() for _ in lines] == [f"echo {line}" for line in lines]


async def test_decode_returning_nil_skips_on_message(running):
    conn = await client(running)
    await conn.send(b"skip\nafter\n")
    assert await conn.recv_line() == "echo after"


# -- the connection object ----------------------------------------------------------


async def test_old_calling_style_gets_the_connection_as_last_argument(running):
    events = await watcher(running)
    conn = await client(running)
    assert await ask(conn, "old") == "true true true"
    client_id = await ask(conn, "id")
    assert client_id.isdigit()
    await conn.close()
    assert await closed_event(events, client_id) == "nil true"


async def test_clear_buffer_in_on_message_drops_the_rest_of_the_input(running):
    conn = await client(running)
    await conn.send(b"clear\ndropped\nalso dropped\npartial")
    assert await conn.recv_line() == "cleared"
    await conn.assert_silent()
    assert await ask(conn, "kept") == "echo kept"  # "partial" went too


async def test_clear_buffer_in_protocol_input_keeps_the_packet_only(running):
    conn = await client(running)
    await conn.send(b"clear-in-input\ndropped\n")
    assert await conn.recv_line() == "echo clear-in-input"
    await conn.assert_silent()
    assert await ask(conn, "next") == "echo next"


# -- protocol_encode on every way out ------------------------------------------------


async def test_publish_encodes_once_for_all_socket_subscribers(running):
    subscribers = [await client(running) for _ in range(3)]
    for sub in subscribers:
        assert await ask(sub, "sub news") == "subscribed"
    publisher = await client(running)
    before = int((await ask(publisher, "encodes")).split()[1])
    assert await ask(publisher, "pub news hello") == "published 3 0"
    for sub in subscribers:
        assert await sub.recv_line() == "hello"
    after = int((await ask(publisher, "encodes")).split()[1])
    # one for the publish; the replies are conn:send, written as given
    assert after - before == 1


async def test_the_publishes_of_one_turn_reach_socket_subscribers_encoded_and_in_order(running):
    """From the second publish of a turn the frames are held and written
    together (Hub.publish): protocol_encode's bytes, joined in order."""
    subscribers = [await client(running) for _ in range(2)]
    for sub in subscribers:
        assert await ask(sub, "sub news") == "subscribed"
    for i in range(30):  # one node: engine.publish does not yield, so one turn
        assert await running.engine.publish("news", f"n{i}") == (2, 0)
    for sub in subscribers:
        assert [await sub.recv_line() for _ in range(30)] == [f"n{i}" for i in range(30)]
    await assert_served(running)


async def test_conn_send_writes_the_scripts_bytes_as_given(running):
    conn = await client(running)
    await conn.send_line("raw <framed-by-the-script>")
    assert await conn.recv_exactly(22) == b"<framed-by-the-script>"
    await conn.assert_silent()  # no newline of protocol_encode's after it
    assert await ask(conn, "next") == "echo next"


async def test_http_api_send_and_publish_pass_through_protocol_encode(running):
    conn = await client(running)
    client_id = await ask(conn, "id")
    assert await ask(conn, "sub api") == "subscribed"
    reply = await running.api("/v1/mesh/send", {"c": client_id, "d": "direct"})
    assert reply == {"E": None, "r": {"s": True}}
    assert await conn.recv_line() == "direct"
    reply = await running.api("/v1/mesh/publish", {"c": "api", "d": "to all"})
    assert reply["r"] == {"s": 1, "f": 0}
    assert await conn.recv_line() == "to all"


@pytest.mark.parametrize("payload, error", [
    ("encode-table", "protocol_encode must return a string, got table"),
    ("encode-empty", "protocol_encode returned an empty string"),
    ("encode-boom", "encode boom"),
    ("encode-wait", "protocol_encode cannot wait"),
    ("encode-yield", "protocol_encode cannot yield"),
])
async def test_a_failing_protocol_encode_fails_that_send_only(running, caplog, payload, error):
    conn = await client(running)
    assert await ask(conn, "sub bad") == "subscribed"
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        reply = await ask(conn, f"send {payload}")
        assert reply.startswith("err send failed")  # mix.mesh.send: the reason is logged
        assert await ask(conn, f"pub bad {payload}") == "published 0 1"
    assert error in logged(caplog)
    assert await ask(conn, "still open") == "echo still open"
    await assert_served(running)


# -- bad return values, errors and bounds ---------------------------------------------


@pytest.mark.parametrize("expr, error", [
    ("nil", "must return an integer (packet length, 0 to wait for more, -1 to disconnect), got nil"),
    ("'5'", "must return an integer (packet length, 0 to wait for more, -1 to disconnect), got string"),
    ("1.5", "got 1.5"),
    ("{}", "got table"),
    ("1000", "returned 1000 with 12 bytes buffered (expected 0..12 or -1)"),
    ("-2", "returned -2 with"),
])
async def test_a_bad_protocol_input_result_is_a_clear_error(running, caplog, expr, error):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await conn.send_line(f"return {expr}".ljust(10))
        await conn.assert_closed()
    assert f"protocol_input failed for client {client_id}" in logged(caplog)
    assert error in logged(caplog)
    # on_close gets the short reason only (no path, no message): the details are in the log.
    assert await closed_event(events, client_id) == "lua error true"
    await assert_served(running)


async def test_protocol_input_returning_minus_one_disconnects(running):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    await conn.send(b"hang-up\nnever handled\n")
    await conn.assert_closed()
    assert "returned -1" in await closed_event(events, client_id)
    await assert_served(running)


@pytest.mark.parametrize("line, callback, marker", [
    ("boom", "on_message", "-- BOOM"),
    ("decode-boom", "protocol_decode", "-- DECODE BOOM"),
])
async def test_a_lua_error_is_logged_with_file_line_and_closes(running, caplog, line, callback, marker):
    conn = await client(running)
    client_id = await ask(conn, "id")
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await conn.send_line(line)
        await conn.assert_closed()
    text = logged(caplog)
    assert f"{callback} failed for client {client_id}" in text
    assert f"entry0.lua:{line_of(marker)}:" in text
    await assert_served(running)


async def test_unframed_input_over_max_packet_size_closes_with_a_logged_reason(running, caplog):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    await conn.send(b"x" * 64)  # at the limit: still waiting for its newline
    await conn.assert_silent()
    with caplog.at_level(logging.WARNING, logger="connmix.socket"):
        await conn.send(b"x")
        await conn.assert_closed()
    reason = "packet too big: 65 bytes buffered without a complete packet (maxPacketSize 64)"
    assert reason in logged(caplog)
    assert await closed_event(events, client_id) == f"{reason} true"
    await assert_served(running)


async def keep_talking(conn: TcpClient) -> None:
    while True:
        await conn.send_line("keep-alive")
        await asyncio.sleep(0.3)


async def test_read_timeout_closes_an_idle_client(start_engine):
    running = await start_engine(SCRIPT, protocol="socket", readTimeout=1)
    events = await watcher(running)
    talker = asyncio.create_task(keep_talking(events))  # the watcher is not idle
    try:
        idle = await client(running)
        client_id = await ask(idle, "id")
        await idle.assert_closed()
        assert (await closed_event(events, client_id)).startswith("read timeout")
    finally:
        talker.cancel()
    await assert_served(running)


async def test_a_client_that_does_not_read_is_closed_as_slow(start_engine):
    running = await start_engine(SCRIPT, protocol="socket", maxSendQueue=64 * 1024)
    events = await watcher(running)
    stuck = await client(running)
    client_id = await ask(stuck, "id")
    assert await ask(stuck, "sub flood") == "subscribed"
    for _ in range(2000):  # until the kernel's buffers are full too (at most 200 MB)
        delivered, _ = await running.engine.publish("flood", "y" * 100_000)
        if not delivered:
            break
        await asyncio.sleep(0)
    assert (await closed_event(events, client_id)).startswith("slow client")
    await assert_served(running)


# -- closing ---------------------------------------------------------------------------


async def test_close_flushes_replies_and_on_close_runs_once(running):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    await conn.send_line("bye")
    assert await conn.recv_line() == "bye"
    await conn.assert_closed()
    assert await closed_event(events, client_id) == "nil true"
    await events.assert_silent()


async def test_input_before_a_half_close_is_answered_then_closed(running):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    await conn.send(b"wait 0.2\nlast\n")
    conn.writer.write_eof()
    assert await conn.recv_line() == "waited"
    assert await conn.recv_line() == "echo last"
    await conn.assert_closed()
    assert await closed_event(events, client_id) == "nil true"


async def test_eof_inside_a_packet_is_reported_to_on_close(running):
    events = await watcher(running)
    conn = await client(running)
    client_id = await ask(conn, "id")
    await conn.send(b"unfinished")
    conn.writer.write_eof()
    await conn.assert_closed()
    err = await closed_event(events, client_id)
    assert err.startswith("connection closed by the client inside a packet (10 bytes unframed)")


async def test_closed_connections_leave_the_hub(running):
    conns = [await client(running) for _ in range(20)]
    for conn in conns:
        assert await ask(conn, "sub room") == "subscribed"
        await conn.close()
    await until(lambda: running.engine.stats()["connections"] == 0, "every connection left")
    assert running.engine.stats() == {"connections": 0, "channels": 0, "subscriptions": 0}


async def test_connection_churn_leaves_lua_memory_flat(running):
    probe = await client(running)
    for _ in range(20):  # warm up: first-time allocations of the state
        churn = await client(running)
        assert await ask(churn, "sub room") == "subscribed"
        await churn.close()
    before = int(await ask(probe, "mem"))
    for _ in range(300):
        churn = await client(running)
        assert await ask(churn, "sub room") == "subscribed"
        await churn.close()
    await asyncio.sleep(0.2)  # the last on_close runs
    after = int(await ask(probe, "mem"))
    assert after - before < 20, (before, after)  # KB; a leak of 300 connections is far more


RUNAWAY = r"""
function protocol_input(buf)
    if buf:tostring() == "spin" then
        while true do end
    end
    return buf:length()
end

function protocol_encode(str)
    if str == "spin" then
        while true do end
    end
    return "<" .. str .. ">"
end

function on_message(msg)
    local conn = mix.socket.tcp()
    if msg == "send-spin" then
        local err = mix.mesh.send(conn:client_id(), "spin")
        conn:send(protocol_encode("after " .. tostring(err ~= nil)))
    else
        conn:send(protocol_encode(msg))
    end
end
"""


async def test_runaway_protocol_callbacks_are_stopped_by_the_cpu_budget(start_engine, caplog):
    running = await start_engine(RUNAWAY, protocol="socket", luavm={"cpuBudget": 0.2})
    conn = await client(running)
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await conn.send(b"send-spin")
        assert await conn.recv_exactly(12) == b"<after true>"
        await conn.send(b"ok")
        assert await conn.recv_exactly(4) == b"<ok>"  # the connection carries on
        spinner = await client(running)
        await spinner.send(b"spin")
        await spinner.assert_closed()
    assert logged(caplog).count("exceeded its Lua CPU budget of 0.2s") == 2
    await conn.send(b"still")
    assert await conn.recv_exactly(7) == b"<still>"


# -- mix.buffer -------------------------------------------------------------------------

BUFFER_SCRIPT = r"""
function protocol_input(buf)
    if buf:length() < 2 then
        return 0
    end
    local size = buf:read(1):byte()
    if buf:length() < 1 + size then
        return 0
    end
    return 1 + size
end

function on_message(packet)
    local conn = mix.socket.tcp()
    local buf = mix.buffer.new(packet)
    local out = {}
    out[#out + 1] = buf:length() .. "/" .. buf:position()
    local head = buf:read(1)
    out[#out + 1] = head:byte() .. "@" .. buf:position()
    local s, err = buf:read(100)
    out[#out + 1] = tostring(s) .. ":" .. tostring(err)
    out[#out + 1] = buf:read(2) .. "@" .. buf:position()
    out[#out + 1] = tostring(buf:read(-1) == nil) .. "," .. tostring(select(2, buf:read("x")))
    out[#out + 1] = buf:tostring() == packet and tostring(buf) == packet and "whole"
    out[#out + 1] = tostring(select(2, mix.buffer.new(nil)))
    conn:send(table.concat(out, " | ") .. "\n")
end
"""


async def test_mix_buffer_reads_forward_from_its_position(start_engine):
    running = await start_engine(BUFFER_SCRIPT, protocol="socket")
    conn = await client(running)
    await conn.send(b"\x03abc\x00")  # one packet, then a byte of the next
    assert await conn.recv_line() == (
        "4/0 | 3@1 | nil:buffer: 100 bytes asked, 3 left | ab@3 | "
        "true,bad argument #1 to 'read' (non-negative integer expected, got x) | whole | "
        "bad argument #1 to 'new' (string expected, got nil)")


async def test_without_protocol_callbacks_bytes_pass_through(start_engine):
    running = await start_engine("""
        function on_message(data)
            mix.socket.tcp():send("got " .. data)
        end
    """, protocol="socket")
    conn = await client(running)
    await conn.send(b"raw bytes")
    assert await conn.recv_exactly(len(b"got raw bytes")) == b"got raw bytes"


# -- websocket and socket subscribers in one engine -----------------------------------


async def test_a_publish_reaches_websocket_and_socket_subscribers(tmp_path, session):
    (tmp_path / "ws.lua").write_text("""
        function on_message(msg)
            conn:subscribe(msg.data)
            conn:send("ok " .. tostring(conn:clear_buffer()))
        end
        function on_close(client_id, err, c)  -- the old style works on websocket servers too
            mix.mesh.publish("mixed", "ws closed " .. tostring(c:client_id() == client_id))
        end
    """)
    (tmp_path / "tcp.lua").write_text(textwrap.dedent(SCRIPT))
    conf = {"engine": {"apiServer": {"port": 0, "bind": "127.0.0.1"}, "servers": [
        {"port": 0, "bind": "127.0.0.1", "protocol": "websocket", "entry": "ws.lua",
         "options": [{"name": "path", "value": "/ws"}]},
        {"port": 0, "bind": "127.0.0.1", "protocol": "socket", "entry": "tcp.lua"},
    ]}}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    try:
        ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port(0)}/ws")
        await ws.send_str("mixed")
        assert (await ws.receive(timeout=5)).data == "ok clear_buffer: not a socket connection"
        tcp = await TcpClient.connect(engine.server_port(1))
        assert await ask(tcp, "sub mixed") == "subscribed"
        assert await engine.publish("mixed", '{"n": 1}') == (2, 0)
        assert await receive_json(ws) == {"n": 1}
        assert await tcp.recv_line() == '{"n": 1}'
        await tcp.send_line("pub mixed from-tcp")
        assert await tcp.recv_line() == "from-tcp"  # the publish comes before the reply
        assert await tcp.recv_line() == "published 2 0"
        assert (await ws.receive(timeout=5)).data == "from-tcp"
        await ws.close()
        assert await tcp.recv_line() == "ws closed true"
        await tcp.close()
    finally:
        await engine.stop()
