"""Guarantees of the websocket server that one-line mutations used to break
unnoticed (issue 14): per-connection order behind a waiting callback, a
client leaving mid-wait, on_close that waits, the inbox flood back-pressure
and the cap on frames queued before the upgrade. Each test proves its point
by the order of events, with a held backend where something must wait."""
from __future__ import annotations

import aiohttp

from tests.held_backend import GUARD, eventually, held_fixture  # noqa: F401 (the held fixture)
from tests.helpers import assert_silent

SCRIPT = """
local backend = "%s"
close_holds = {}

function on_handshake(client_id, headers, server)
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
    local hold = data:match("^hold:(.+)$")
    local key = data:match("^wait:(.+)$")
    if hold then
        c:send("held:" .. mix.http.request("GET", backend .. hold).body)
    elseif key then
        c:send("waiting")
        local v = c:wait_context_value(key)
        mix.queue.push("ended", v == nil and "nil" or v)
    elseif data == "hold-on-close" then
        close_holds[c:client_id()] = true
        c:send("armed")
    elseif data == "accepted" then
        c:send("accepted:" .. c:context_value("accepted"))
    else
        c:send(data)
    end
end

function on_close(client_id, err)
    if close_holds[client_id] then
        mix.queue.push("after-wait", mix.http.request("GET", backend .. "on-close").body)
    end
    mix.queue.push("closed", err or "clean")
end
"""


async def start(start_engine, held):
    return await start_engine(SCRIPT % f"http://127.0.0.1:{held.port}/hold/")


async def text(ws) -> str:
    msg = await ws.receive(timeout=GUARD)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    return msg.data


async def read_by_server(ws) -> None:
    """Return once the server has read every frame sent before: a ping sent
    after them is answered in stream order (nothing else may arrive)."""
    await ws.ping(b"sync")
    msg = await ws.receive(timeout=GUARD)
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
