"""The messages of one read go to on_message in one call into Lua (issue 12,
echo), and the engine behaves as it did with one call per message: each
callback in order and in a slice of its own (its own CPU budget), a ping
answered in its place, the messages after one that waits queued behind it,
none given to on_message after one that closed the connection or failed,
Lua memory checked before each, every callback counted.

Each test sends several frames in one write (one read on loopback) and
proves its point by what on_message got (``seen?``, asked on another
connection) and by the order of the replies."""
from __future__ import annotations

import logging
import struct

from connmix_py.lua.memory import HEADROOM, MB, VALUE_OVERHEAD, hard_cap_mb
from tests.held_backend import held_fixture  # noqa: F401 (the held fixture)
from tests.integration.test_metrics import scrape, value
from tests.raw_websocket import RawWebSocket, client_frame

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA

SCRIPT = """
local backend = "@BACKEND@"
seen = {}  -- every message on_message got, in order
kept = {}

function on_message(msg)
    local c, data = mix.websocket(), msg.data
    if data == "seen?" then
        c:send(table.concat(seen, ","))
        return
    end
    seen[#seen + 1] = data
    if msg.type == "binary" then
        c:send("binary " .. data)
        return
    end
    local hold = data:match("^hold:(.+)$")
    local burn = tonumber(data:match("^burn:(.+)$"))
    if hold then
        c:send("held:" .. mix.http.request("GET", backend .. hold).body)
    elseif burn then  -- CPU time, in seconds
        local started = os.clock()
        while os.clock() - started < burn do end
        c:send(data)
    elseif data == "spin" then
        while true do end
    elseif data == "boom" then
        error("boom in a batch")
    elseif data:match("^fill:") then  -- keep memory up to the given bytes in use; answer the bytes in use
        collectgarbage()
        local used = collectgarbage("count") * 1024
        local piece = used < 48 * 1024 * 1024 and 8 * 1024 * 1024 or 512 * 1024  -- over budget: < budget/64
        local n = math.min(piece, tonumber(data:sub(6)) - used)
        if n > 0 then
            kept[#kept + 1] = string.rep(string.char(#kept % 256), n)  -- a new string each time
        end
        collectgarbage()
        c:send(string.format("%d", collectgarbage("count") * 1024))
    elseif data:match("^keep:") then
        kept[#kept + 1] = string.rep(string.char(#kept % 256), tonumber(data:sub(6)))
        c:send("kept")
    elseif data == "replace" then  -- the next messages go to another on_message
        local before = on_message
        on_message = function(m)
            on_message = before
            mix.websocket():send("replaced " .. m.data)
        end
        c:send("replacing")
    elseif data == "bye" then
        c:send("closing")
        c:close()
    else
        c:send("echo " .. data)
    end
end
"""


def frames(*texts: str) -> bytes:
    """One write of text frames."""
    return b"".join(client_frame(text.encode()) for text in texts)


async def start(start_engine, held=None, **settings):
    return await start_engine(SCRIPT.replace("@BACKEND@", held.url("") if held else ""), **settings)


async def seen(running) -> list[str]:
    """What on_message got so far, asked on a connection of its own."""
    ws = await running.connect()
    await ws.send_str("seen?")
    answer = (await ws.receive(timeout=5)).data
    await ws.close()
    return answer.split(",") if answer else []


async def one_read(running, data: bytes, replies: int) -> tuple[RawWebSocket, list[tuple[int, bytes]]]:
    """A new raw client sends ``data`` in one write; it and the first frames it gets back."""
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_bytes(data)
    return raw, [await raw.read_frame(timeout=30) for _ in range(replies)]


async def test_messages_of_one_read_are_answered_in_order_with_a_ping_in_its_place(start_engine):
    running = await start(start_engine)
    raw, replies = await one_read(running, frames("1", "2") + client_frame(b"p", OP_PING) + frames("3", "4", "5"), 6)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"echo 2"), (OP_PONG, b"p"),
                       (OP_TEXT, b"echo 3"), (OP_TEXT, b"echo 4"), (OP_TEXT, b"echo 5")]
    raw.drop()


async def test_text_and_binary_messages_of_one_read_keep_their_kind(start_engine):
    running = await start(start_engine)
    raw, replies = await one_read(running, frames("1") + client_frame(b"2", OP_BINARY) + frames("3"), 3)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"binary 2"), (OP_TEXT, b"echo 3")]
    raw.drop()


async def test_each_message_of_a_read_goes_to_the_on_message_defined_when_it_runs(start_engine):
    running = await start(start_engine)
    raw, replies = await one_read(running, frames("1", "replace", "3", "4"), 4)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"replacing"), (OP_TEXT, b"replaced 3"),
                       (OP_TEXT, b"echo 4")]
    raw.drop()


async def test_a_read_of_more_messages_than_one_call_takes_is_answered_in_order(start_engine):
    """200 messages, some of 30 KB, in one write: more than one call into
    Lua takes (by count and by bytes), all answered in order."""
    running = await start(start_engine)
    texts = [str(i) + ("." * 30000 if i % 50 == 7 else "") for i in range(200)]
    raw, replies = await one_read(running, frames(*texts), 200)
    assert replies == [(OP_TEXT, b"echo " + text.encode()) for text in texts]
    assert await seen(running) == texts
    raw.drop()


async def test_text_that_is_not_utf8_in_a_read_ends_it_after_the_messages_before(start_engine):
    running = await start(start_engine)
    raw, replies = await one_read(running, frames("1", "2") + client_frame(b"\xff\xfe") + frames("4"), 3)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"echo 2"), (OP_CLOSE, struct.pack("!H", 1007))]
    assert await seen(running) == ["1", "2"]
    raw.drop()


async def test_the_messages_after_one_that_waits_run_after_it_in_order(start_engine, held):
    running = await start(start_engine, held)
    raw, replies = await one_read(running, frames("1", "2", "hold:x", "4", "5"), 2)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"echo 2")]
    await held.arrived("x")
    await raw.assert_silent()  # 4 and 5 wait behind the third
    assert await seen(running) == ["1", "2", "hold:x"]
    held.release("x")
    replies = [await raw.read_frame() for _ in range(3)]
    assert replies == [(OP_TEXT, b"held:x"), (OP_TEXT, b"echo 4"), (OP_TEXT, b"echo 5")]
    assert await seen(running) == ["1", "2", "hold:x", "4", "5"]
    raw.drop()


async def test_a_lua_error_is_handled_as_before_and_the_rest_of_the_read_is_not_run(start_engine, caplog):
    """An error closes the connection with 1011 (README, "Lua"): the messages
    after it in the same read never reach on_message, as before batches."""
    running = await start(start_engine)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await raw.send_bytes(frames("1", "boom", "3", "4"))
        assert await raw.read_frame() == (OP_TEXT, b"echo 1")
        assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1011) + b"lua error")
    assert "on_message failed for client" in caplog.text and "boom in a batch" in caplog.text
    assert await seen(running) == ["1", "boom"]
    samples = await scrape(running)
    assert value(samples, "connmix_lua_errors_total", script="entry0.lua") == 1
    raw.drop()


async def test_no_message_after_one_that_closed_the_connection_reaches_on_message(start_engine):
    running = await start(start_engine)
    raw, replies = await one_read(running, frames("1", "bye", "3", "4"), 3)
    assert replies == [(OP_TEXT, b"echo 1"), (OP_TEXT, b"closing"), (OP_CLOSE, struct.pack("!H", 1000))]
    assert await seen(running) == ["1", "bye"]
    raw.drop()


async def test_each_message_of_a_read_has_its_own_cpu_budget(start_engine, caplog):
    """Eight callbacks of 0.15 s CPU each in one read, under a 1 s budget:
    none is stopped (together they take more). Each is far under the budget,
    which is wall-clock time too, so a busy machine does not stop one. A
    spinning one is stopped alone."""
    running = await start(start_engine, luavm={"cpuBudget": 1})
    raw, replies = await one_read(running, frames(*["burn:0.15"] * 8), 8)
    assert replies == [(OP_TEXT, b"burn:0.15")] * 8
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await raw.send_bytes(frames("1", "spin", "3"))
        assert await raw.read_frame() == (OP_TEXT, b"echo 1")
        assert await raw.read_frame(timeout=20) == (OP_CLOSE, struct.pack("!H", 1011) + b"lua error")
    assert "exceeded its Lua CPU budget of 1s" in caplog.text
    assert await seen(running) == ["burn:0.15"] * 8 + ["1", "spin"]
    raw.drop()


async def test_every_message_of_a_read_is_counted_as_a_callback_run(start_engine):
    running = await start(start_engine)
    before = value(await scrape(running), "connmix_lua_callback_duration_seconds_count", script="entry0.lua")
    raw, replies = await one_read(running, frames("1", "2", "3", "4", "5"), 5)
    assert replies == [(OP_TEXT, b"echo %d" % i) for i in range(1, 6)]
    samples = await scrape(running)
    # the upgrade's on_handshake call, and five on_message
    assert value(samples, "connmix_lua_callback_duration_seconds_count", script="entry0.lua") == before + 6
    assert value(samples, "connmix_lua_callback_duration_seconds_bucket", script="entry0.lua",
                 le="+Inf") == before + 6
    raw.drop()


async def test_a_message_that_no_longer_fits_in_lua_memory_is_refused_inside_a_read(start_engine, caplog):
    """Lua memory a little under what call_message lets a message in with;
    then one read: the first message keeps enough that the second no longer
    fits. The second is refused as call_message refuses it (not run, 1011)."""
    running = await start(start_engine, luavm={"memoryBudget": 64})
    room = hard_cap_mb(64) * MB - HEADROOM - VALUE_OVERHEAD  # call_message's limit (lua/vm.py)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    filler = await running.connect()
    target = room - 200 * 1024
    used = 0
    while used < target:
        await filler.send_str(f"fill:{target}")
        used = int((await filler.receive(timeout=10)).data)
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await raw.send_bytes(frames("keep:400000", "probe"))
        assert await raw.read_frame() == (OP_TEXT, b"kept")
        assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1011) + b"lua error")
    assert "on_message not run for client" in caplog.text and "Lua memory budget used up" in caplog.text
    raw.drop()
