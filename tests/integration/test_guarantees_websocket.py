"""Guarantees of the websocket server that one-line mutations used to break
unnoticed (issue 14): per-connection order behind a waiting callback, a
client leaving mid-wait, on_close that waits, the inbox flood back-pressure
and the cap on frames queued before the upgrade. Each test proves its point
by the order of events, with a held backend where something must wait.
Since the transport rewrite (issue 12): reading pauses when the inbox fills
and while on_handshake waits (the kernel buffers fill, the client's sends
stall), and a close the client never answers ends after CLOSE_TIMEOUT."""
from __future__ import annotations

import struct

import aiohttp

from connmix_py.servers import websocket
from tests.held_backend import GUARD, eventually, held_fixture  # noqa: F401 (the held fixture)
from tests.helpers import assert_silent
from tests.raw_websocket import RawWebSocket, client_frame
from tests.waiting import within

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
# Far more than the server's socket and ours buffer (a stalled send proves reading paused).
BULK = client_frame(b"bulk" + b"b" * 65532, OP_BINARY) * 512  # 32 MiB

SCRIPT = """
local backend = "%s"
waiting = 0  -- callbacks in a wait_context_value
close_holds = {}
bulk = {}

function on_handshake(client_id, headers, server)
    if server.RequestUri:find("hold=", 1, true) then  -- on_handshake waits
        mix.http.request("GET", backend .. server.RequestUri:match("hold=(%%w+)"))
    end
    -- Frames sent before the upgrade wait in the connection; refused ones count.
    if server.RequestUri:find("early=", 1, true) then
        local n = tonumber(server.RequestUri:match("early=(%%d+)"))
        local c, accepted = mix.websocket(), 0
        for i = 1, n do
            if c:send(tostring(i)) == nil then accepted = accepted + 1 end
        end
        c:set_context_value("accepted", accepted)
    end
end

function on_message(msg)
    local c, data = mix.websocket(), msg.data
    if data:sub(1, 4) == "bulk" then  -- counted, not answered
        bulk[c:client_id()] = (bulk[c:client_id()] or 0) + 1
        return
    end
    local hold = data:match("^hold:(.+)$")
    local key = data:match("^wait:(.+)$")
    if hold then
        c:send("held:" .. mix.http.request("GET", backend .. hold).body)
    elseif key then
        c:send("waiting")
        waiting = waiting + 1
        local v = c:wait_context_value(key)
        waiting = waiting - 1
        mix.queue.push("ended", v == nil and "nil" or v)
    elseif data == "hold-on-close" then
        close_holds[c:client_id()] = true
        c:send("armed")
    elseif data:sub(1, 5) == "push:" then
        mix.queue.push("pushed", data:sub(6))
    elseif data == "count?" then
        c:send("bulk:" .. (bulk[c:client_id()] or 0))
    elseif data == "close" then
        c:close()
    elseif data == "accepted" then
        c:send("accepted:" .. c:context_value("accepted"))
    else
        c:send(data)
    end
end

function on_close(client_id, err)
    mix.queue.push("waiting at on_close", tostring(waiting))  -- the waits end first
    if close_holds[client_id] then
        mix.queue.push("after-wait", mix.http.request("GET", backend .. "on-close").body)
    end
    mix.queue.push("closed", err or "clean")
end
"""


async def start(start_engine, held):
    return await start_engine(SCRIPT % f"http://127.0.0.1:{held.port}/hold/")


async def text(ws) -> str:
    async with within(GUARD, "the next text frame"):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    return msg.data


async def read_by_server(ws) -> None:
    """Return once the server has read every frame sent before: a ping sent
    after them is answered in stream order (nothing else may arrive)."""
    await ws.ping(b"sync")
    async with within(GUARD, "the pong: the server reads while a callback waits"):
        msg = await ws.receive()
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"sync"), msg


async def echo_round_trip(running) -> None:
    """Another connection is served now."""
    other = await running.connect()
    await other.send_str("still served")
    assert await text(other) == "still served"
    await other.close()


async def test_frames_queued_behind_a_waiting_callback_are_handled_in_order(start_engine, held):
    running = await start(start_engine, held)
    ws = await running.connect(autoping=False)
    await ws.send_str("hold:first")
    await held.arrived("first")
    for i in range(1, 6):
        await ws.send_str(f"queued {i}")
    await read_by_server(ws)  # all five are in the inbox before the wait ends
    await echo_round_trip(running)
    held.release("first")
    assert [await text(ws) for _ in range(6)] == ["held:first"] + [f"queued {i}" for i in range(1, 6)]


async def test_a_queued_frame_that_waits_holds_the_frames_behind_it(start_engine, held):
    running = await start(start_engine, held)
    ws = await running.connect(autoping=False)
    await ws.send_str("hold:a")
    await held.arrived("a")
    await ws.send_str("hold:b")
    await ws.send_str("after b")
    await read_by_server(ws)
    held.release("a")
    assert await text(ws) == "held:a"
    await held.arrived("b")  # the queued frame waits in its turn ...
    await echo_round_trip(running)
    held.release("b")
    assert await text(ws) == "held:b"  # ... and the frame behind it waits for it
    assert await text(ws) == "after b"


async def test_a_client_leaving_while_its_callback_waits_ends_the_wait(start_engine, held):
    running = await start(start_engine, held)
    queues = running.engine.queues
    ws = await running.connect()
    await ws.send_str("wait:never")
    assert await text(ws) == "waiting"  # the wait has begun: leaving must end it
    await ws.close()
    await eventually(lambda: queues.size("closed"), "on_close after a client left mid-wait")
    assert queues.pop("waiting at on_close") == "0"
    assert queues.pop("ended") == "nil"
    assert queues.pop("closed") == "clean"
    await eventually(lambda: running.engine.stats()["connections"] == 0, "the connection leaves the hub")


async def test_an_on_close_that_waits_finishes_and_others_are_served_meanwhile(start_engine, held):
    running = await start(start_engine, held)
    queues = running.engine.queues
    ws = await running.connect()
    await ws.send_str("hold-on-close")
    assert await text(ws) == "armed"
    await ws.close()
    await held.arrived("on-close")
    await echo_round_trip(running)
    assert queues.size("after-wait") == 0  # on_close is still waiting
    held.release("on-close")
    await eventually(lambda: queues.size("after-wait"), "on_close to finish after its wait")
    assert queues.pop("after-wait") == "on-close"


async def test_a_flood_behind_a_waiting_callback_pauses_reading_and_keeps_order(start_engine, held):
    """More frames than the inbox holds: reading pauses (a ping behind them
    stays unanswered until the wait ends), nothing is lost or reordered."""
    running = await start(start_engine, held)
    ws = await running.connect(autoping=False)
    await ws.send_str("hold:flood")
    await held.arrived("flood")
    flood = [f"f{i}" for i in range(600)]  # well over the inbox bound (MAX_INBOX, 256)
    for data in flood:
        await ws.send_str(data)
    await ws.ping(b"behind the flood")
    await echo_round_trip(running)
    await assert_silent(ws, 1.0)  # reading paused: the ping was not read
    held.release("flood")
    frames = []
    while True:
        msg = await ws.receive(timeout=GUARD)
        if msg.type is aiohttp.WSMsgType.PONG:
            break
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frames.append(msg.data)
    assert frames == ["held:flood"] + flood


async def raw_client_waiting(start_engine, held, name: str) -> tuple:
    """(running, raw): a raw client whose callback waits for the held ``name``."""
    running = await start(start_engine, held)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_text(f"hold:{name}")
    await held.arrived(name)
    return running, raw


async def test_a_flood_in_one_read_pauses_reading_and_what_follows_waits_its_turn(start_engine, held):
    """The frame that fills the inbox (MAX_INBOX) pauses reading: the client's
    sends stall once the kernel buffers are full, a ping read after that frame
    is answered in its turn, and nothing is lost or reordered."""
    running, raw = await raw_client_waiting(start_engine, held, "flood")
    flood = [b"f%d" % i for i in range(websocket.MAX_INBOX)]
    await raw.send_bytes(b"".join(map(client_frame, flood)) + client_frame(b"p", OP_PING) + client_frame(b"after"))
    sent = await raw.send_until_stalled(BULK)
    assert sent < len(BULK), "the server kept reading a client whose inbox is full"
    await raw.assert_silent()  # the pong waits behind the flood
    await echo_round_trip(running)
    held.release("flood")
    async with within(GUARD, "the server to read again"):
        await raw.send_bytes(BULK[sent:] + client_frame(b"count?"))
    async with within(GUARD, "the replies once the wait ended"):
        got = [await raw.read_frame(GUARD) for _ in range(len(flood) + 4)]
    assert got == ([(OP_TEXT, b"held:flood")] + [(OP_TEXT, f) for f in flood]
                   + [(OP_PONG, b"p"), (OP_TEXT, b"after"), (OP_TEXT, b"bulk:512")])


async def test_input_during_a_waiting_on_handshake_pauses_reading_and_is_handled_after(start_engine, held):
    """Frames sent right behind the upgrade request while on_handshake waits
    are held up to MAX_EARLY_INPUT, then reading pauses; after the 101 they
    are all handled."""
    running = await start(start_engine, held)
    raw = await RawWebSocket.open(running.engine.server_port())
    await raw.send_upgrade_request(running.path + "?hold=handshake")
    await held.arrived("handshake")
    sent = await raw.send_until_stalled(BULK)
    assert sent < len(BULK), "the server kept reading while on_handshake waited"
    await echo_round_trip(running)
    held.release("handshake")
    async with within(GUARD, "the server to read again"):
        await raw.send_bytes(BULK[sent:] + client_frame(b"count?"))
    assert (await raw.read_head())[0] == 101
    assert await raw.read_frame(GUARD) == (OP_TEXT, b"bulk:512")


async def test_a_client_that_never_answers_the_close_is_closed_after_close_timeout(start_engine, held, monkeypatch):
    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 1.0)  # the default 10 s would only slow the test
    running = await start(start_engine, held)
    queues = running.engine.queues
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_text("close")
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1000))
    async with within(GUARD, "the server to close a socket whose close was never answered"):
        while await raw.loop.sock_recv(raw.sock, 4096):
            pass
    await eventually(lambda: queues.size("closed"), "on_close after the close timed out")
    assert queues.pop("closed") == "clean"  # the script closed it
    raw.drop()


async def test_frames_queued_behind_a_close_by_the_server_are_dropped(start_engine, held):
    running, raw = await raw_client_waiting(start_engine, held, "a")
    queues = running.engine.queues
    await raw.send_bytes(client_frame(b"close") + client_frame(b"push:late") + client_frame(b"sync", OP_PING))
    assert await raw.read_frame() == (OP_PONG, b"sync")  # both frames are queued
    held.release("a")
    assert await raw.read_frame() == (OP_TEXT, b"held:a")
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1000))
    await raw.send_frame(struct.pack("!H", 1000), OP_CLOSE)
    await eventually(lambda: queues.size("closed"), "on_close after the script closed")
    assert queues.size("pushed") == 0, "a frame queued behind conn:close() was handled"
    raw.drop()


async def test_frames_a_client_sent_before_its_close_are_still_handled(start_engine, held):
    running, raw = await raw_client_waiting(start_engine, held, "a")
    queues = running.engine.queues
    await raw.send_bytes(client_frame(b"push:early") + client_frame(struct.pack("!H", 1000), OP_CLOSE))
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1000))  # answered while a callback waits
    held.release("a")
    await eventually(lambda: queues.size("closed"), "on_close after the client closed")
    assert queues.pop("pushed") == "early"
    raw.drop()


async def test_frames_sent_before_the_upgrade_are_capped_and_sent_in_order(start_engine, held):
    running = await start(start_engine, held)
    ws = await running.session.ws_connect(running.ws_url + "?early=5000")  # the cap is 1024
    await ws.send_str("accepted")
    received = []
    while True:
        data = await text(ws)
        if data.startswith("accepted:"):
            break
        received.append(data)
    accepted = int(data.split(":")[1])
    assert 0 < accepted < 5000  # the rest were refused, not queued without bound
    assert received == [str(i) for i in range(1, accepted + 1)]
